//! Embeds the git commit Keel is built from (`KEEL_GIT_COMMIT`), for run records; `unknown`
//! when the source is not a git checkout or git is missing.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

fn main() {
    let commit = std::env::var("KEEL_GIT_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KEEL_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=KEEL_GIT_COMMIT");
    // Rebuild when HEAD moves: the HEAD file, the branch it points at, and packed refs.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
                println!("cargo:rerun-if-changed={common}/{reference}");
                println!("cargo:rerun-if-changed={common}/packed-refs");
            }
        }
    }
}
