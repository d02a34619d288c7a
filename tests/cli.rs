//! The command line as a user meets it.

use crate::util::lazypull;

fn stdout_of(args: &[&str]) -> String {
    let out = lazypull(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lazypull {args:?} failed:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "lazypull {args:?} panicked:\n{stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_names_the_commands() {
    let help = stdout_of(&["--help"]);
    for word in ["convert", "demo"] {
        assert!(
            help.contains(word),
            "`lazypull --help` lacks {word}:\n{help}"
        );
    }
}

#[test]
fn convert_help_names_every_option() {
    let help = stdout_of(&["convert", "--help"]);
    for word in [
        "--format",
        "--chunk-size",
        "--compression-level",
        "--prefetch-list",
        "--threads",
        "--platform",
        "--json",
        "estargz",
        "zstdchunked",
        "oci:",
        "docker-archive:",
        "oci-archive:",
    ] {
        assert!(
            help.contains(word),
            "`lazypull convert --help` lacks {word}:\n{help}"
        );
    }
}

#[test]
fn demo_runs_and_summarises() {
    let out = stdout_of(&["demo"]);
    assert!(
        out.lines().filter(|l| !l.trim().is_empty()).count() >= 2,
        "`lazypull demo` printed no summary:\n{out}"
    );
}

#[test]
fn bad_arguments_fail_without_panicking() {
    for args in [
        &["convert"][..],
        &["convert", "--format", "squashfs", "oci:/a:t", "oci:/b:t"],
        &["convert", "--chunk-size", "lots", "oci:/a:t", "oci:/b:t"],
        &["no-such-command"],
    ] {
        let out = lazypull(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "lazypull {args:?} succeeded");
        assert!(
            !stderr.contains("panicked"),
            "lazypull {args:?} panicked:\n{stderr}"
        );
        assert!(!stderr.trim().is_empty(), "lazypull {args:?} said nothing");
    }
}
