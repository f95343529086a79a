use bootpatch::engine::Paths;

fn main() {
    std::process::exit(bootpatch::cli::main_with(
        std::env::args_os().skip(1),
        &Paths::default(),
    ));
}
