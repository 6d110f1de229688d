fn main() {
    eprintln!("simulations: not built yet (issue 5)");
    std::process::exit(2)
}
