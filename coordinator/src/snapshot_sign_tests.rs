use std::os::unix::fs::PermissionsExt as _;

use sha2::{Digest, Sha256};

use super::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// A snapshot-shaped file (pages plus the sha256 trailer) and options that find no etcd tools.
fn snapshot(dir: &Path) -> (PathBuf, VerifyOptions) {
    let mut body: Vec<u8> = (0..512 * 8).map(|i| (i % 251) as u8).collect();
    let digest = Sha256::digest(&body);
    body.extend_from_slice(&digest);
    let path = dir.join("etcd-1.db");
    std::fs::write(&path, body).expect("snapshot");
    let tools = dir.join("no-tools");
    std::fs::create_dir_all(&tools).expect("tools dir");
    let options = VerifyOptions {
        etcd_dir: Some(tools),
        ..VerifyOptions::default()
    };
    (path, options)
}

#[test]
fn keygen_writes_a_private_key_0600_with_its_public_key_beside_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tmp");
    let files = keygen(dir.path(), false).expect("keygen into a dir");
    assert_eq!(files.private_key, dir.path().join("snapshot-signing.key"));
    assert_eq!(files.public_key, dir.path().join("snapshot-signing.pub"));
    assert_eq!(mode(&files.private_key), 0o600);
    assert_eq!(mode(&files.public_key), 0o644);
    let key = SigningKey::load(&files.private_key).expect("private key");
    let public = PublicKey::load(&files.public_key).expect("public key");
    assert_eq!(
        (key.public(), public.id()),
        (&public, files.key_id.as_str())
    );

    let before = std::fs::read(&files.private_key).expect("read");
    let err = keygen(dir.path(), false).expect_err("exists");
    assert!(matches!(err, SignError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(&files.private_key).expect("read"), before);
    let again = keygen(dir.path(), true).expect("forced");
    assert_ne!(again.key_id, files.key_id);

    let named = keygen(&dir.path().join("prod.key"), false).expect("keygen to a file");
    assert_eq!(named.public_key, dir.path().join("prod.pub"));
    assert_eq!(
        key_paths(Path::new("/k/signer")).1,
        PathBuf::from("/k/signer.pub")
    );
}

#[tokio::test]
async fn sign_writes_a_signature_that_verify_checks_against_trusted_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let (snap, options) = snapshot(dir.path());
    let keys = keygen(&dir.path().join("k.key"), false).expect("keygen");
    let other = keygen(&dir.path().join("o.key"), false).expect("keygen");

    let signed = sign(&snap, &keys.private_key, &options)
        .await
        .expect("sign");
    assert_eq!(signed.signature_file, dir.path().join("etcd-1.db.sig"));
    assert_eq!(mode(&signed.signature_file), 0o600);
    assert_eq!(signed.key_id, keys.key_id);
    assert!(
        signed.note.is_some(),
        "no etcdutl here: the count is unknown"
    );
    assert_eq!(signed.facts.total_keys, None);

    // What `snapshot verify` found in the file.
    let checked = crate::snapshot::check(&snap).expect("checked");
    let report = VerifyReport {
        file: snap.clone(),
        sha256: Some(checked.sha256.clone()),
        size: Some(checked.size),
        ..VerifyReport::default()
    };
    let (ok, result) = check_signature(&report, None, std::slice::from_ref(&keys.public_key));
    result.expect("verified");
    let ok = ok.expect("a signature");
    assert!(ok.verified, "{ok:?}");
    assert!(ok.render().contains("verified"), "{}", ok.render());
    // Without trusted keys: read and matched, not verified, and the report says so.
    let (unverified, result) = check_signature(&report, None, &[]);
    result.expect("matches");
    let unverified = unverified.expect("a signature");
    assert!(!unverified.verified && unverified.render().contains("--trusted-key"));
    // Another key trusted: refused, naming both.
    let e = check_signature(&report, None, std::slice::from_ref(&other.public_key))
        .1
        .expect_err("untrusted");
    assert!(matches!(e, SignatureError::Untrusted { .. }), "{e}");
    // Another file: refused as a mismatch.
    let changed = VerifyReport {
        size: Some(checked.size + 512),
        ..report.clone()
    };
    let e = check_signature(&changed, None, std::slice::from_ref(&keys.public_key))
        .1
        .expect_err("other size");
    assert!(
        matches!(e, SignatureError::Mismatch { what: "size", .. }),
        "{e}"
    );
    // A tampered file: refused.
    let text = std::fs::read_to_string(&signed.signature_file).expect("sig");
    let tampered = text.replace(&signed.facts.signed_at, "2020-01-01T00:00:00Z");
    std::fs::write(&signed.signature_file, tampered).expect("write");
    let e = check_signature(&report, None, std::slice::from_ref(&keys.public_key))
        .1
        .expect_err("tampered");
    assert!(matches!(e, SignatureError::Invalid { .. }), "{e}");
    // Trusted keys asked for, and no signature at all.
    std::fs::remove_file(&signed.signature_file).expect("rm");
    let (found, result) = check_signature(&report, None, std::slice::from_ref(&keys.public_key));
    assert!(found.is_some() && result.is_err());
    let (found, result) = check_signature(&report, None, &[]);
    assert!(found.is_none() && result.is_ok());

    // A damaged snapshot is not signed.
    let mut bytes = std::fs::read(&snap).expect("read");
    bytes[100] ^= 1;
    std::fs::write(&snap, bytes).expect("write");
    let err = sign(&snap, &keys.private_key, &options)
        .await
        .expect_err("corrupt");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(!signed.signature_file.exists());
}
