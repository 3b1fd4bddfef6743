#![forbid(unsafe_code)]
fn main() {
    println!("quorate-agent {}", env!("CARGO_PKG_VERSION"));
}
