//! The quorate lab: real etcd members in kubeadm's layout on 127.0.<net>.x, a kubelet stand-in
//! per host that runs its static pod manifests, and an apiserver stand-in.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod bench;
pub mod demo;
pub mod etcd;
pub mod event_schema;
pub mod faults;
pub mod hostns;
pub mod kubelet;
pub mod lab;
pub mod layout;
pub mod load;
pub mod matrix;
pub mod pki;
pub mod procs;
pub mod realfaults;
pub mod scenario;
pub mod store;
pub mod systemctl;
pub mod testlab;
pub mod tools;
