//! Test guest: a plain WASI command (exports `wasi:cli/run` only).

fn main() {
    println!("hi");
}
