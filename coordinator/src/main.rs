#![forbid(unsafe_code)]
fn main() {
    println!("quorate {}", env!("CARGO_PKG_VERSION"));
}
