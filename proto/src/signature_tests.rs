use super::*;

fn facts() -> SignedFacts {
    SignedFacts {
        sha256: "ab".repeat(32),
        size: 20_480_032,
        revision: Some(1234),
        total_keys: Some(5678),
        signed_at: "2026-11-30T21:00:00Z".into(),
    }
}

fn key() -> SigningKey {
    SigningKey::generate().expect("key").0
}

#[test]
fn a_signature_verifies_with_its_key_and_round_trips_through_file_and_proto() {
    let key = key();
    let sig = SnapshotSignature::sign(facts(), &key).expect("sign");
    assert_eq!(sig.signature.len(), 64);
    assert_eq!(sig.key_id, key.public().id());
    let trusted = [key.public().clone()];
    assert_eq!(sig.verify(&trusted).expect("verifies"), key.public());
    sig.check_file(&"ab".repeat(32), 20_480_032)
        .expect("same file");
    sig.check_status(1234, 5678).expect("same status");

    let back = SnapshotSignature::from_json(&sig.to_json()).expect("file form");
    assert_eq!(back, sig);
    back.verify(&trusted).expect("verifies after the file");
    let proto: pb::SnapshotSignature = sig.clone().into();
    let back = SnapshotSignature::try_from(proto).expect("proto form");
    assert_eq!(back, sig);
    let json = serde_json::to_string(&sig).expect("serde");
    assert_eq!(
        serde_json::from_str::<SnapshotSignature>(&json).expect("serde"),
        sig
    );

    // Unknown revision and key count are signed as such.
    let unknown = SignedFacts {
        revision: None,
        total_keys: None,
        ..facts()
    };
    let sig = SnapshotSignature::sign(unknown, &key).expect("sign");
    let text = String::from_utf8(sig.message()).expect("utf8");
    assert!(
        text.starts_with("quorate-snapshot-signature-v1\nsha256="),
        "{text}"
    );
    assert!(
        text.contains("\nrevision=unknown\ntotal_keys=unknown\n"),
        "{text}"
    );
    sig.verify(&trusted).expect("verifies");
    sig.check_status(99, 99).expect("nothing to compare");
}

#[test]
fn keys_round_trip_through_pem_and_debug_hides_the_private_key() {
    let (key, pem) = SigningKey::generate().expect("key");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    let again = SigningKey::from_pem(&pem).expect("private pem");
    assert_eq!(again.public(), key.public());
    let public_pem = key.public().to_pem();
    assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(
        PublicKey::from_pem(&public_pem).expect("public pem"),
        *key.public()
    );
    assert_eq!(key.public().id().len(), 16);
    let shown = format!("{key:?}");
    assert!(
        shown.contains("hidden") && !shown.contains(&pem[30..60]),
        "{shown}"
    );
    assert!(
        PublicKey::from_pem(&pem).is_err(),
        "a private key is not a public key"
    );
    assert!(SigningKey::from_pem(&public_pem).is_err());
    // An OpenSSL-written key (`openssl genpkey -algorithm ed25519`: PKCS#8 v1, no public key).
    let openssl = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
    let k = SigningKey::from_pem(openssl).expect("openssl key");
    // RFC 8032 test 1's public key for that secret.
    let rfc = "-----BEGIN PUBLIC KEY-----\n\
               MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
               -----END PUBLIC KEY-----\n";
    assert_eq!(k.public(), &PublicKey::from_pem(rfc).expect("rfc key"));
}

#[test]
fn tampered_fields_another_key_a_truncated_signature_and_another_version_are_refused() {
    let key = key();
    let trusted = [key.public().clone()];
    let sig = SnapshotSignature::sign(facts(), &key).expect("sign");

    type Tamper = Box<dyn Fn(&mut SnapshotSignature)>;
    let tampered: Vec<(&str, Tamper)> = vec![
        ("sha256", Box::new(|s| s.facts.sha256 = "cd".repeat(32))),
        ("size", Box::new(|s| s.facts.size += 1)),
        ("revision", Box::new(|s| s.facts.revision = Some(1235))),
        ("revision unknown", Box::new(|s| s.facts.revision = None)),
        ("keys", Box::new(|s| s.facts.total_keys = Some(1))),
        (
            "date",
            Box::new(|s| s.facts.signed_at = "2027-01-01T00:00:00Z".into()),
        ),
        ("bit", Box::new(|s| s.signature[7] ^= 1)),
    ];
    for (what, tamper) in tampered {
        let mut bad = sig.clone();
        tamper(&mut bad);
        assert_eq!(
            bad.verify(&trusted),
            Err(SignatureError::Invalid {
                key_id: sig.key_id.clone()
            }),
            "{what}"
        );
    }

    // Another key: not trusted, naming the keys that are.
    let other = self::key();
    let by_other = SnapshotSignature::sign(facts(), &other).expect("sign");
    let err = by_other.verify(&trusted).expect_err("untrusted");
    assert!(matches!(err, SignatureError::Untrusted { .. }));
    let text = err.to_string();
    assert!(
        text.contains(other.public().id()) && text.contains(key.public().id()),
        "{text}"
    );
    assert!(
        by_other
            .verify(&[])
            .expect_err("none")
            .to_string()
            .contains("trusted: none")
    );
    // Another key claiming the trusted key's id does not verify.
    let mut forged = by_other.clone();
    forged.key_id = sig.key_id.clone();
    assert!(matches!(
        forged.verify(&trusted),
        Err(SignatureError::Invalid { .. })
    ));

    // A truncated signature is refused on reading, from the file and from the wire.
    let mut file: serde_json::Value = serde_json::from_str(&sig.to_json()).expect("json");
    file["signature"] = B64.encode(&sig.signature[..40]).into();
    let err = SnapshotSignature::from_json(&file.to_string()).expect_err("truncated");
    assert!(err.to_string().contains("64 bytes"), "{err}");
    let mut proto: pb::SnapshotSignature = sig.clone().into();
    proto.signature.truncate(63);
    assert!(SnapshotSignature::try_from(proto).is_err());
    // A truncated file is not JSON.
    let text = sig.to_json();
    assert!(SnapshotSignature::from_json(&text[..text.len() / 2]).is_err());

    // Another version: named as such, from the file and from the wire.
    let mut file: serde_json::Value = serde_json::from_str(&sig.to_json()).expect("json");
    file["version"] = 2.into();
    assert_eq!(
        SnapshotSignature::from_json(&file.to_string()),
        Err(SignatureError::Version { found: 2 })
    );
    let mut proto: pb::SnapshotSignature = sig.clone().into();
    proto.version = 2;
    let err = SnapshotSignature::try_from(proto).expect_err("v2");
    assert!(err.0.contains("version 2"), "{err}");
    // Not a signature file at all, and a field with a newline.
    assert!(SnapshotSignature::from_json(r#"{"format":"x","version":1}"#).is_err());
    let mut bad = facts();
    bad.signed_at = "2026-11-30T21:00:00Z\nsize=1".into();
    assert!(SnapshotSignature::sign(bad, &key).is_err());
}

#[test]
fn a_signature_for_another_file_or_status_is_named_as_such() {
    let sig = SnapshotSignature::sign(facts(), &key()).expect("sign");
    let err = sig
        .check_file(&"cd".repeat(32), 20_480_032)
        .expect_err("sha");
    assert!(matches!(
        err,
        SignatureError::Mismatch { what: "sha256", .. }
    ));
    assert!(err.to_string().contains("another snapshot"), "{err}");
    let err = sig.check_file(&"ab".repeat(32), 1).expect_err("size");
    assert!(matches!(err, SignatureError::Mismatch { what: "size", .. }));
    assert!(matches!(
        sig.check_status(1, 5678),
        Err(SignatureError::Mismatch {
            what: "revision",
            ..
        })
    ));
    assert!(matches!(
        sig.check_status(1234, 1),
        Err(SignatureError::Mismatch {
            what: "key count",
            ..
        })
    ));
}
