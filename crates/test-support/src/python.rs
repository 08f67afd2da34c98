//! A Python interpreter with the tests' own packages
//! (`crates/test-support/requirements.txt`, pinned), so that
//! `cargo nextest run` works on a fresh machine: on first use a virtual
//! environment is made under the system temp dir, named by a hash of the
//! requirements, and the packages are installed from PyPI into it. Test
//! processes running at once each build in their own folder and the first
//! to finish renames it into place; the others use that one.

use std::path::PathBuf;
use std::process::Command;

const REQUIREMENTS: &str = include_str!("../requirements.txt");

/// The path of a `python3` that can import every package the tests need.
pub fn python() -> PathBuf {
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(REQUIREMENTS));
    let home = std::env::temp_dir().join(format!("tollgate-test-python-{}", &digest[..16]));
    let interpreter = home.join("bin").join("python3");
    if home.join("ready").exists() {
        return interpreter;
    }
    let building = std::env::temp_dir().join(format!(
        "tollgate-test-python-{}-{}",
        &digest[..16],
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&building);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&building)
        .status()
        .expect("python3 must be installed for the tests");
    assert!(made.success(), "python3 -m venv failed");
    let requirements = building.join("requirements.txt");
    std::fs::write(&requirements, REQUIREMENTS).unwrap();
    let installed = Command::new(building.join("bin").join("python3"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .status()
        .expect("pip");
    assert!(
        installed.success(),
        "installing the tests' Python packages from PyPI failed"
    );
    std::fs::write(building.join("ready"), b"").unwrap();
    // Another process may have finished first: keep its copy.
    if std::fs::rename(&building, &home).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    assert!(
        home.join("ready").exists(),
        "no Python environment at {home:?}"
    );
    interpreter
}
