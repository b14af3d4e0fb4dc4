use clap::Parser;

// glibc malloc's free and consolidation paths were a visible share of Herald's CPU under
// load (perf, see BENCHMARKS.md); mimalloc's per-thread heaps avoid most of that work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = herald::cli::Cli::parse();
    match herald::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            // `herald notify`, `history`, … tell refusals, usage and outages apart.
            match e.downcast_ref::<herald::remote::RemoteError>() {
                Some(remote) => std::process::ExitCode::from(remote.exit_code()),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
