//! Registries: the real distribution registry (`docker-registry`) on 127.0.0.1, anonymous, with
//! htpasswd basic auth and with token auth. A fixture image pushed by `skopeo` is converted
//! registry → registry; `skopeo` reads the results back with the digests lazypull reported;
//! the converted images mount lazily from the registry and equal the source layers applied.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use lazypull_converter::sample;
use serde_json::Value;

use crate::mount::{expected_tree, fuse_support, read_everything, without_dir_mtimes, Served};
use crate::util::registry::{missing_registry_tools, Auth, TestRegistry, PASSWORD, USER};
use crate::util::tree::{compare, snapshot};
use crate::util::{lazypull_bin, run_ok, run_with_timeout, sha256, skip_unless, Layout, TIMEOUT};

/// `lazypull ARGS` with extra environment.
fn lazypull_env(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(lazypull_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(&mut cmd, None, TIMEOUT)
}

/// `--creds USER:PASS` when the registry wants them.
fn creds_args(reg: &TestRegistry) -> Vec<String> {
    reg.creds()
        .map(|c| vec!["--creds".to_string(), c])
        .unwrap_or_default()
}

/// Convert `src` to `dst` with `--json`; the report.
fn convert(reg: &TestRegistry, format: &str, src: &str, dst: &str) -> Value {
    let mut args: Vec<String> = vec!["convert".into(), "--json".into(), "--no-progress".into()];
    args.extend(["--format".into(), format.into()]);
    args.extend(creds_args(reg));
    args.extend([src.to_string(), dst.to_string()]);
    // No docker config of the machine's user may leak into the test.
    let out = lazypull_env(&args, &[("DOCKER_CONFIG", "/nonexistent")]);
    assert!(
        out.status.success(),
        "lazypull {args:?}: {}\nregistry log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        reg.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Push the sample image with skopeo as `REPO:v1`; the image and its local layout.
fn push_fixture(reg: &TestRegistry, dir: &Path) -> sample::SampleImage {
    let image = sample::write_sample_image(&dir.join("fixture"), "t").unwrap();
    reg.skopeo_copy(
        &format!("oci:{}:t", image.dir.display()),
        &reg.docker_ref("sample:v1"),
        "dest",
    );
    image
}

/// Whether the tools are here (else skip, or fail under CI).
fn tools_ok() -> bool {
    match missing_registry_tools() {
        None => true,
        Some(tool) => {
            crate::util::skip(&format!("`{tool}` is not installed"));
            false
        }
    }
}

/// The whole round trip against one kind of registry.
fn round_trip(auth: Auth) {
    if !tools_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(auth);
    let image = push_fixture(&reg, tmp.path());
    let src = format!("{}/sample:v1", reg.host);
    for format in ["estargz", "erofs"] {
        let dst = format!("{}/sample-{format}:v1", reg.host);
        let report = convert(&reg, format, &src, &dst);
        let root = report["root"]["digest"].as_str().unwrap().to_string();
        let push = &report["push"];
        assert_eq!(push["digest"], root.as_str(), "{report}");
        assert_eq!(push["uploaded"], push["blobs"], "{report}");

        // skopeo sees the image lazypull reported, byte for byte.
        let raw = reg.skopeo_raw(&format!("docker://{dst}"));
        assert_eq!(
            sha256(&raw),
            root,
            "{format}: the tag names another manifest"
        );
        let out = tmp.path().join(format!("back-{format}"));
        reg.skopeo_copy(
            &format!("docker://{dst}"),
            &format!("oci:{}:v1", out.display()),
            "src",
        );
        let layout = Layout::new(&out);
        assert_eq!(layout.index_entry("v1")["digest"], root.as_str());
        let manifest = layout.manifest("v1");
        let reported: Vec<&str> = report["manifests"][0]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        let copied: Vec<&str> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        assert_eq!(reported, copied, "{format}: layer digests");
        for d in &copied {
            let blob = layout.blob(d);
            assert_eq!(&sha256(&blob), d, "{format}: blob {d} copied back intact");
        }

        // inspect reads the TOCs / chunk indexes from the registry and finds them verified.
        let mut args: Vec<String> = vec!["inspect".into(), "--json".into()];
        args.extend(creds_args(&reg));
        args.push(dst.clone());
        let out = lazypull_env(&args, &[("DOCKER_CONFIG", "/nonexistent")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let inspected: Value = serde_json::from_slice(&out.stdout).unwrap();
        let layers = inspected["manifests"][0]["layers"].as_array().unwrap();
        let digests: Vec<&str> = layers
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        assert_eq!(digests, reported, "{inspected}");
        for (l, r) in layers
            .iter()
            .zip(report["manifests"][0]["layers"].as_array().unwrap())
        {
            assert_eq!(l["format"], format, "{l}");
            assert_eq!(l["verified"], true, "{l}");
            // The reader also counts the root and parent directories the tar left implicit.
            assert!(l["entries"].as_u64() >= r["entries"].as_u64(), "{l} vs {r}");
            assert!(l["chunks"].as_u64().unwrap() > 0, "{l}");
            assert!(
                !l["verificationAnnotations"].as_array().unwrap().is_empty(),
                "{l}"
            );
        }

        // Converting again finds every blob in place; nothing is uploaded twice.
        let again = convert(&reg, format, &src, &dst);
        assert_eq!(again["push"]["uploaded"], 0, "{again}");
        assert_eq!(again["root"]["digest"], root.as_str());

        // Converting the converted image again keeps every blob: the registry mounts them all
        // from the source repository instead of receiving them (pull scope on it, with tokens).
        let copy = format!("{}/copy-{format}:v1", reg.host);
        let copied = convert(&reg, format, &dst, &copy);
        assert_eq!(copied["root"]["digest"], root.as_str(), "{copied}");
        assert_eq!(
            copied["push"]["mounted"], copied["push"]["blobs"],
            "{copied}"
        );
        assert_eq!(copied["push"]["uploaded"], 0, "{copied}");

        mount_from_registry(&reg, &image, &dst, tmp.path(), format);
    }
    if auth == Auth::Token {
        assert!(reg.tokens_issued() > 0, "no token was ever asked for");
    }
}

/// Mount `reference` lazily from the registry and compare it with the fixture's layers.
fn mount_from_registry(
    reg: &TestRegistry,
    image: &sample::SampleImage,
    reference: &str,
    tmp: &Path,
    format: &str,
) {
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let (want, explicit) = expected_tree(image, &tmp.join(format!("want-{format}")));
    let cache = tmp.join(format!("cache-{format}"));
    let mnt = tmp.join(format!("mnt-{format}"));
    let creds = reg.creds();
    let mut extra: Vec<&str> = Vec::new();
    if let Some(c) = &creds {
        extra.extend(["--creds", c]);
    }
    let served = Served::start_with(&extra, reference, &mnt, &cache);
    let got = without_dir_mtimes(snapshot(&mnt));
    let diff = compare(&want, &got, Some(&explicit));
    assert!(
        diff.0.is_empty(),
        "{format}: the image mounted from the registry differs from its layers:\n{diff}"
    );
    assert!(read_everything(&mnt) > 0);
    let stderr = served.stop();
    let stats = crate::mount::final_stats(&stderr);
    assert!(
        stats["fetch"]["requests"].as_u64().unwrap() > 0,
        "nothing was fetched from the registry: {stderr}"
    );
    assert_eq!(stats["fetch"]["failures"], 0, "{stderr}");
}

#[test]
fn anonymous_registry_round_trip() {
    round_trip(Auth::Anonymous);
}

#[test]
fn basic_auth_registry_round_trip() {
    round_trip(Auth::Basic);
}

#[test]
fn token_auth_registry_round_trip() {
    round_trip(Auth::Token);
}

/// Credentials from a docker config (`auths`) and from a credential helper (`credHelpers`);
/// missing and wrong ones fail naming the registry and the step.
#[test]
fn credentials_from_docker_config_and_helper() {
    if !tools_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for auth in [Auth::Basic, Auth::Token] {
        let reg = TestRegistry::start(auth);
        push_fixture(&reg, tmp.path());
        let src = format!("{}/sample:v1", reg.host);
        let pull = |name: &str, extra: &[&str], env: &[(&str, &str)]| {
            let mut args: Vec<String> = vec!["convert".into(), "--no-progress".into()];
            args.extend(extra.iter().map(|s| s.to_string()));
            let out = tmp.path().join(format!("{auth:?}-out-{name}"));
            args.extend([src.clone(), format!("oci:{}:v1", out.display())]);
            (lazypull_env(&args, env), out)
        };

        let config_dir = tmp.path().join(format!("{auth:?}-docker"));
        std::fs::create_dir_all(&config_dir).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        std::fs::write(
            config_dir.join("config.json"),
            serde_json::json!({"auths": {format!("http://{}", reg.host): {"auth": b64}}})
                .to_string(),
        )
        .unwrap();
        let dc = config_dir.to_str().unwrap();
        let (out, dir) = pull("config", &[], &[("DOCKER_CONFIG", dc)]);
        assert!(
            out.status.success(),
            "{auth:?}: docker config auths: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dir.join("index.json").is_file());

        // A credential helper that knows this registry only.
        let bin = tmp.path().join(format!("{auth:?}-bin"));
        std::fs::create_dir_all(&bin).unwrap();
        let helper = bin.join("docker-credential-lazypulltest");
        std::fs::write(
            &helper,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\n\
                 if [ \"$server\" = \"{host}\" ]; then\n  \
                 printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n\
                 else\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
                host = reg.host
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let helper_dir = tmp.path().join(format!("{auth:?}-helper"));
        std::fs::create_dir_all(&helper_dir).unwrap();
        std::fs::write(
            helper_dir.join("config.json"),
            serde_json::json!({"credHelpers": {reg.host.clone(): "lazypulltest"}}).to_string(),
        )
        .unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let hd = helper_dir.to_str().unwrap();
        let (out, _) = pull("helper", &[], &[("DOCKER_CONFIG", hd), ("PATH", &path)]);
        assert!(
            out.status.success(),
            "{auth:?}: credential helper: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // No credentials, and wrong ones: refused, naming registry, repository and step.
        let empty = tmp.path().join(format!("{auth:?}-empty"));
        std::fs::create_dir_all(&empty).unwrap();
        let ed = empty.to_str().unwrap();
        for (name, extra) in [("none", vec![]), ("wrong", vec!["--creds", "lazy:wrong"])] {
            let (out, dir) = pull(name, &extra, &[("DOCKER_CONFIG", ed)]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{auth:?} {name}: succeeded");
            for part in [
                format!("registry {}", reg.host),
                "repository sample".to_string(),
                "pull manifest v1".to_string(),
            ] {
                assert!(
                    err.contains(&part),
                    "{auth:?} {name}: `{part}` not in: {err}"
                );
            }
            assert!(err.contains("401"), "{auth:?} {name}: {err}");
            assert!(
                !dir.exists(),
                "{auth:?} {name}: the destination was created"
            );
        }
    }
}

/// A registry that stops answering: a pull retries then fails clearly, leaving the
/// destination alone; a push interrupted half-way leaves the tag on the image it named before.
#[test]
fn stopped_registry_fails_cleanly_and_keeps_the_tag() {
    if !tools_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start(Auth::Anonymous);
    let image = push_fixture(&reg, tmp.path());
    let dst = format!("{}/target:v1", reg.host);
    let before = convert(&reg, "estargz", &format!("{}/sample:v1", reg.host), &dst);
    let before = before["root"]["digest"].as_str().unwrap().to_string();

    // Push the same image as EROFS in 1 KiB chunks, and stop the registry while the blobs go up.
    let mut child = Command::new(lazypull_bin())
        .args(["convert", "--no-progress", "--format", "erofs"])
        .args(["--upload-chunk-size", "1024"])
        .arg(format!("oci:{}:t", image.dir.display()))
        .arg(&dst)
        .env("DOCKER_CONFIG", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let uploads = reg
        .storage()
        .join("docker/registry/v2/repositories/target/_uploads");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !uploads.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        assert!(Instant::now() < deadline, "no upload started");
        assert!(child.try_wait().unwrap().is_none(), "the push ended first");
        std::thread::sleep(Duration::from_millis(5));
    }
    reg.stop();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the push succeeded without a registry"
    );
    for part in [
        format!("registry {}", reg.host),
        "repository target".to_string(),
        "push blob sha256:".to_string(),
        "retries".to_string(),
    ] {
        assert!(err.contains(&part), "`{part}` not in: {err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "gave up too slowly"
    );

    // While it is down, a pull fails the same way, and the destination is never created.
    let out_dir = tmp.path().join("pulled");
    let args: Vec<String> = vec![
        "convert".into(),
        "--no-progress".into(),
        format!("{}/sample:v1", reg.host),
        format!("oci:{}:v1", out_dir.display()),
    ];
    let out = lazypull_env(&args, &[("DOCKER_CONFIG", "/nonexistent")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("pull manifest v1") && err.contains("after 3 retries"),
        "{err}"
    );
    assert!(!out_dir.exists());

    reg.resume();
    let raw = reg.skopeo_raw(&format!("docker://{dst}"));
    assert_eq!(sha256(&raw), before, "the interrupted push moved the tag");

    // Stopped in the middle of a pull: through a slow proxy, the manifest and config arrive,
    // then the registry goes away before the layers; retries, a clear error, no destination.
    let proxy = crate::util::registry::ForwardProxy::start();
    proxy.set_delay(Duration::from_millis(300));
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let child = Command::new(lazypull_bin())
        .args(["convert", "--no-progress"])
        .arg(format!("{}/sample:v1", reg.host))
        .arg(format!("oci:{}:v1", out_dir.display()))
        .env("DOCKER_CONFIG", "/nonexistent")
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.requests() < 2 {
        assert!(Instant::now() < deadline, "the pull never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    reg.stop();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the pull succeeded without a registry"
    );
    assert!(err.contains("pull blob sha256:"), "{err}");
    assert!(err.contains("retries"), "{err}");
    assert!(!out_dir.exists());
}

/// An image index pushed with `skopeo copy --all` and a Docker v2 schema 2 manifest pushed with
/// `--format v2s2` convert like an OCI manifest; the index is pushed after its manifest.
#[test]
fn index_and_docker_v2s2_sources() {
    if !tools_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(Auth::Anonymous);
    let multi = sample::write_sample_image(&tmp.path().join("multi"), "t").unwrap();
    crate::util::wrap_in_image_index(&multi.dir, "t");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:t", multi.dir.display()))
            .arg(reg.docker_ref("multi:v1")),
    );
    let single = sample::write_sample_image(&tmp.path().join("single"), "t").unwrap();
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--format",
                "v2s2",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:t", single.dir.display()))
            .arg(reg.docker_ref("docker:v1")),
    );
    let raw: Value = serde_json::from_slice(&reg.skopeo_raw(&reg.docker_ref("docker:v1"))).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    let src = format!("{}/multi:v1", reg.host);
    let dst = format!("{}/multi-esgz:v1", reg.host);
    let report = convert(&reg, "estargz", &src, &dst);
    assert_eq!(
        report["root"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(report["push"]["manifests"], 2, "{report}");
    let raw = reg.skopeo_raw(&format!("docker://{dst}"));
    assert_eq!(sha256(&raw), report["root"]["digest"].as_str().unwrap());
    let index: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        report["manifests"][0]["digest"]
    );

    let mut args: Vec<String> = vec![
        "convert".into(),
        "--json".into(),
        "--platform".into(),
        "linux/arm64".into(),
    ];
    args.extend([src.clone(), format!("{}/none:v1", reg.host)]);
    let out = lazypull_env(&args, &[("DOCKER_CONFIG", "/nonexistent")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("platform linux/arm64"));

    let report = convert(
        &reg,
        "erofs",
        &format!("{}/docker:v1", reg.host),
        &format!("{}/docker-erofs:v1", reg.host),
    );
    let raw = reg.skopeo_raw(&reg.docker_ref("docker-erofs:v1"));
    assert_eq!(sha256(&raw), report["root"]["digest"].as_str().unwrap());
}

/// `--mirror`: a mirror holding the image serves it even when the image's registry is down;
/// a mirror without it falls through to the image's registry.
#[test]
fn mirrors_are_tried_first() {
    if !tools_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut origin = TestRegistry::start(Auth::Anonymous);
    let mirror = TestRegistry::start(Auth::Anonymous);
    let image = push_fixture(&origin, tmp.path());
    let origin_host = origin.host.clone();
    let pull = |name: &str, mirror_host: &str| {
        let args: Vec<String> = vec![
            "convert".into(),
            "--json".into(),
            "--mirror".into(),
            mirror_host.into(),
            format!("{origin_host}/sample:v1"),
            format!("oci:{}:v1", tmp.path().join(name).display()),
        ];
        lazypull_env(&args, &[("DOCKER_CONFIG", "/nonexistent")])
    };
    // The mirror is empty: everything comes from the origin.
    let out = pull("fallback", &mirror.host);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Fill the mirror, stop the origin: the mirror alone serves the same image.
    mirror.skopeo_copy(
        &format!("oci:{}:t", image.dir.display()),
        &mirror.docker_ref("sample:v1"),
        "dest",
    );
    origin.stop();
    let out = pull("mirrored", &mirror.host);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["root"], expected["root"]);
}

/// A lazy mount whose token stops being accepted (the token server's key rotated, the registry
/// restarted): range reads get a 401, fetch a new token and go on; nothing fails.
#[test]
fn lazy_mount_renews_a_refused_token() {
    if !tools_ok() {
        return;
    }
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start(Auth::Token);
    let image = push_fixture(&reg, tmp.path());
    let dst = format!("{}/sample-esgz:v1", reg.host);
    convert(&reg, "estargz", &format!("{}/sample:v1", reg.host), &dst);
    let (want, explicit) = expected_tree(&image, &tmp.path().join("want"));

    let creds = reg.creds().unwrap();
    let mnt = tmp.path().join("mnt");
    let extra = ["--creds", &creds, "--no-background-fetch"];
    let served = Served::start_with(&extra, &dst, &mnt, &tmp.path().join("cache"));
    let before = reg.tokens_issued();
    reg.rotate_token_key();
    let got = without_dir_mtimes(snapshot(&mnt));
    assert!(read_everything(&mnt) > 0);
    let diff = compare(&want, &got, Some(&explicit));
    assert!(diff.0.is_empty(), "after the token was refused:\n{diff}");
    let stderr = served.stop();
    let stats = crate::mount::final_stats(&stderr);
    assert_eq!(stats["fetch"]["failures"], 0, "{stderr}");
    assert!(
        reg.tokens_issued() > before,
        "no new token was asked for after the 401: {stderr}"
    );
}

/// A registry that serves bytes other than the digest it names (its storage tampered with):
/// the pull fails with a digest mismatch naming the blob, and the destination is not created.
#[test]
fn tampered_registry_blobs_are_refused() {
    if !tools_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(Auth::Anonymous);
    let image = push_fixture(&reg, tmp.path());
    let layer = &image.layers[1];
    let hex = layer.digest.hex();
    let data = reg
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let out_dir = tmp.path().join("out");
    let args: Vec<String> = vec![
        "convert".into(),
        "--no-progress".into(),
        format!("{}/sample:v1", reg.host),
        format!("oci:{}:v1", out_dir.display()),
    ];
    let out = lazypull_env(&args, &[("DOCKER_CONFIG", "/nonexistent")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tampered layer was accepted");
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(
        err.contains(&format!("pull blob {}", layer.digest)),
        "{err}"
    );
    assert!(!out_dir.exists());
}

/// The registry stops while an image is mounted from it: reads of what was not fetched yet fail
/// with EIO after the retries, within bounded time; once it is back, they succeed.
#[test]
fn registry_outage_during_a_lazy_mount() {
    if !tools_ok() {
        return;
    }
    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start(Auth::Basic);
    push_fixture(&reg, tmp.path());
    let dst = format!("{}/sample-esgz:v1", reg.host);
    convert(&reg, "estargz", &format!("{}/sample:v1", reg.host), &dst);
    let creds = reg.creds().unwrap();
    let mnt = tmp.path().join("mnt");
    let extra = [
        "--creds",
        &creds,
        "--no-background-fetch",
        "--fetch-timeout",
        "1",
        "--fetch-retries",
        "1",
    ];
    let served = Served::start_with(&extra, &dst, &mnt, &tmp.path().join("cache"));
    let files: Vec<String> = crate::mount::walkdir_files(&mnt)
        .into_iter()
        .filter(|(_, len)| *len > 0)
        .map(|(p, _)| p)
        .collect();
    assert!(!files.is_empty());
    reg.stop();
    let started = Instant::now();
    let err = std::fs::read(mnt.join(&files[0])).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "not EIO: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    reg.resume();
    assert!(!std::fs::read(mnt.join(&files[0])).unwrap().is_empty());
    served.stop();
}

/// `HTTP_PROXY` is honoured by the registry client and by the lazy mount's range fetcher;
/// `NO_PROXY` bypasses it.
#[test]
fn http_proxy_is_honoured() {
    if !tools_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(Auth::Basic);
    let image = push_fixture(&reg, tmp.path());
    let proxy = crate::util::registry::ForwardProxy::start();
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let creds = reg.creds().unwrap();
    let convert_via = |dst: &str, no_proxy: &str| {
        let args: Vec<String> = vec![
            "convert".into(),
            "--creds".into(),
            creds.clone(),
            format!("{}/sample:v1", reg.host),
            format!("{}/{dst}", reg.host),
        ];
        let env = [
            ("DOCKER_CONFIG", "/nonexistent"),
            ("HTTP_PROXY", proxy_url.as_str()),
            ("http_proxy", proxy_url.as_str()),
            ("NO_PROXY", no_proxy),
            ("no_proxy", no_proxy),
        ];
        let out = lazypull_env(&args, &env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    convert_via("direct:v1", "127.0.0.1");
    assert_eq!(proxy.requests(), 0, "NO_PROXY was ignored");
    convert_via("proxied:v1", "");
    let after_convert = proxy.requests();
    assert!(
        after_convert > 5,
        "only {after_convert} requests went through the proxy"
    );

    let support = fuse_support();
    skip_unless!(support.is_ok(), "{}", support.unwrap_err());
    let (want, explicit) = expected_tree(&image, &tmp.path().join("want"));
    let mnt = tmp.path().join("mnt");
    let mut cmd = Command::new(lazypull_bin());
    cmd.args([
        "mount",
        "--no-background-fetch",
        "--creds",
        &creds,
        "--cache-dir",
    ])
    .arg(tmp.path().join("cache"))
    .arg(format!("{}/proxied:v1", reg.host))
    .arg(&mnt)
    .env("DOCKER_CONFIG", "/nonexistent")
    .env("HTTP_PROXY", &proxy_url)
    .env("http_proxy", &proxy_url)
    .env_remove("NO_PROXY")
    .env_remove("no_proxy");
    let served = Served::spawn(cmd, &mnt);
    let got = without_dir_mtimes(snapshot(&mnt));
    assert!(read_everything(&mnt) > 0);
    assert!(compare(&want, &got, Some(&explicit)).0.is_empty());
    served.stop();
    assert!(
        proxy.requests() > after_convert,
        "the range reads did not go through the proxy"
    );
}
