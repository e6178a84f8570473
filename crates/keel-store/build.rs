//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds them at build time
//! and cannot tell cargo to watch the folder itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
