//! The benchmark's images, built from software installed on this machine: a base layer with
//! the shared libraries and tools the workload needs (found with `ldd`), and a payload layer
//! with the software itself (hundreds of MB), as a normal gzip OCI image.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use lazypull_converter::sample::{self, ImageLayer, XorShift};

/// The tag of every image in its layout.
pub const TAG: &str = "bench";

/// What runs in the container, and how its readiness shows.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Argument vector, run in the container's root.
    pub argv: Vec<String>,
    /// Printed (stdout or stderr) when the workload is ready.
    pub ready: String,
}

/// A built image: its OCI layout (tag [`TAG`]) and workload.
#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub layout: PathBuf,
    pub workload: Workload,
    /// Uncompressed bytes of the base and payload layers.
    pub tar_bytes: u64,
}

/// The images `lazypull bench` knows.
pub const NAMES: [&str; 4] = ["python", "gcc", "java", "quick"];

const PYTHON_ROOT: &str = "/root/.pyenv/versions/3.11.7";
const JAVA_ROOT: &str = "/usr/lib/jvm/java-17-openjdk-amd64";

/// Build image `name` under `work/name` (reused when already built).
pub fn build(name: &str, work: &Path) -> Result<Image> {
    let dir = work.join(name);
    let layout = dir.join("image");
    let (payload, staged, workload, tools) = match name {
        "python" => {
            let python = format!("{PYTHON_ROOT}/bin/python3.11");
            let workload = Workload {
                argv: vec![
                    python.clone(),
                    "-c".into(),
                    "import json, sqlite3, asyncio, http.server, email; print('ready')".into(),
                ],
                ready: "ready".into(),
            };
            (walk(Path::new(PYTHON_ROOT))?, Vec::new(), workload, vec![])
        }
        "gcc" => {
            let hello = b"#include <stdio.h>\nint main(void) { puts(\"ready\"); return 0; }\n";
            let workload = Workload {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "gcc -O2 -o /tmp/hello /hello.c && /tmp/hello".into(),
                ],
                ready: "ready".into(),
            };
            (
                gcc_files()?,
                vec![("hello.c".to_string(), hello.to_vec())],
                workload,
                vec!["/usr/bin/dash"],
            )
        }
        "java" => {
            let mut files = walk(Path::new(JAVA_ROOT))?;
            files.extend(walk(Path::new("/etc/java-17-openjdk"))?);
            let workload = Workload {
                argv: vec![format!("{JAVA_ROOT}/bin/java"), "-version".into()],
                ready: "version".into(),
            };
            (files, Vec::new(), workload, vec![])
        }
        "quick" => {
            // 48 MiB of data in 24 files; the workload hashes two of them.
            let mut rng = XorShift::new(0xbe7c);
            let staged: Vec<(String, Vec<u8>)> = (0..24)
                .map(|i| (format!("data/f{i:02}"), rng.bytes(2 << 20)))
                .collect();
            let workload = Workload {
                argv: vec![
                    "/usr/bin/sha256sum".into(),
                    "/data/f03".into(),
                    "/data/f17".into(),
                ],
                ready: "/data/f17".into(),
            };
            (Vec::new(), staged, workload, vec!["/usr/bin/sha256sum"])
        }
        other => bail!("unknown image `{other}` (known: {})", NAMES.join(", ")),
    };
    let image = Image {
        name: name.to_string(),
        layout: layout.clone(),
        workload,
        tar_bytes: 0,
    };
    let done = dir.join("built");
    if done.exists() {
        let tar_bytes = std::fs::read_to_string(&done)?.trim().parse().unwrap_or(0);
        return Ok(Image { tar_bytes, ..image });
    }
    std::fs::create_dir_all(&dir)?;
    eprintln!("bench: building the {name} image from this machine's files");
    let mut elves: Vec<PathBuf> = payload.iter().filter(|p| is_elf(p)).cloned().collect();
    elves.extend(tools.iter().map(PathBuf::from));
    let mut base: BTreeSet<PathBuf> = libraries(&elves)?;
    base.extend(tools.iter().flat_map(|t| with_link(Path::new(t))));
    // usrmerge's top-level symlinks, the directories a container needs, accounts.
    for extra in [
        "/bin",
        "/lib",
        "/lib64",
        "/sbin",
        "/tmp",
        "/proc",
        "/dev",
        "/root",
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
    ] {
        if Path::new(extra).symlink_metadata().is_ok() {
            base.insert(PathBuf::from(extra));
        }
    }
    if name == "gcc" {
        // `/bin/sh` for the C workload: dash, as on Debian.
        base.insert(PathBuf::from("/usr/bin/sh"));
    }
    let stage = dir.join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;
    for (rel, data) in &staged {
        let p = stage.join(rel);
        std::fs::create_dir_all(p.parent().unwrap())?;
        std::fs::write(p, data)?;
    }
    let base_tar = dir.join("base.tar");
    let payload_tar = dir.join("payload.tar");
    tar_paths(&base_tar, &with_parents(base), &stage, &[])?;
    let staged_names: Vec<String> = staged.iter().map(|(n, _)| n.clone()).collect();
    tar_paths(
        &payload_tar,
        &with_parents(payload.into_iter().collect()),
        &stage,
        &staged_names,
    )?;
    let layers = [
        layer(&base_tar, &format!("bench {name}: base"))?,
        layer(&payload_tar, &format!("bench {name}: payload"))?,
    ];
    let tar_bytes = std::fs::metadata(&base_tar)?.len() + std::fs::metadata(&payload_tar)?.len();
    let _ = std::fs::remove_dir_all(&layout);
    sample::write_oci_layout(&layout, TAG, &layers)?;
    std::fs::remove_file(&base_tar)?;
    std::fs::remove_file(&payload_tar)?;
    std::fs::remove_dir_all(&stage)?;
    std::fs::write(&done, tar_bytes.to_string())?;
    Ok(Image { tar_bytes, ..image })
}

/// Every path under `root` (itself included), not following symlinks.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.exists() {
        bail!("{} is not installed on this machine", root.display());
    }
    let mut out = vec![root.to_path_buf()];
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_socket() || t.is_fifo() {
                continue;
            }
            out.push(e.path());
            if t.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(out)
}

/// The files of the packages owning gcc, cc1, the assembler and linker, and libc's headers and
/// start files.
fn gcc_files() -> Result<Vec<PathBuf>> {
    let seeds = [
        "/usr/bin/x86_64-linux-gnu-gcc-12",
        "/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
        "/usr/bin/x86_64-linux-gnu-as",
        "/usr/bin/x86_64-linux-gnu-ld.bfd",
        "/usr/include/stdio.h",
        "/usr/include/linux/limits.h",
        "/usr/lib/x86_64-linux-gnu/crt1.o",
        "/usr/lib/gcc/x86_64-linux-gnu/12/crtbegin.o",
    ];
    let out = Command::new("dpkg").arg("-S").args(seeds).output()?;
    if !out.status.success() {
        bail!(
            "dpkg -S: the C toolchain is not installed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut pkgs: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(|p| p.trim().to_string())
        .collect();
    // What a C development image carries beside the compiler (as the official gcc images
    // do): C++, make, perl, a debugger, git, valgrind, libc's debug symbols. The workload
    // touches none of it; installed ones only.
    pkgs.extend(
        [
            "gcc",
            "gcc-12",
            "binutils",
            "libc6-dev",
            "g++-12",
            "libstdc++-12-dev",
            "make",
            "perl",
            "perl-modules-5.36",
            "libperl5.36",
            "gdb",
            "git",
            "valgrind",
            "libc6-dbg",
        ]
        .map(String::from),
    );
    let installed = |p: &String| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    };
    pkgs.retain(installed);
    let out = Command::new("dpkg").arg("-L").args(&pkgs).output()?;
    let mut files: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.symlink_metadata().is_ok())
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn is_elf(p: &Path) -> bool {
    let Ok(meta) = p.symlink_metadata() else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The shared libraries (and the dynamic loader) `elves` load, as the paths to put in the base
/// layer: each library's name in its real directory and the file it links to.
fn libraries(elves: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for group in elves.chunks(64) {
        let out = Command::new("ldd")
            .args(group)
            .output()
            .context("running ldd")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/') && !p.ends_with(':')) {
                libs.extend(with_link(Path::new(p)));
            }
        }
    }
    Ok(libs)
}

/// `p` with its directory resolved (usrmerge: `/lib/…` is `/usr/lib/…`), and what it links to.
fn with_link(p: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return Vec::new();
    };
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let named = dir.join(name);
    let mut out = vec![named.clone()];
    if let Ok(real) = named.canonicalize() {
        if real != named {
            out.push(real);
        }
    }
    out
}

/// `paths` and every directory above them, parents first.
fn with_parents(paths: BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let mut all = BTreeSet::new();
    for p in paths {
        let mut a = p.parent();
        while let Some(d) = a.filter(|d| *d != Path::new("/")) {
            all.insert(d.to_path_buf());
            a = d.parent();
        }
        all.insert(p);
    }
    all.into_iter().collect()
}

/// Archive `paths` (absolute, taken from `/`) and `staged` names from `stage` with GNU tar,
/// without recursing.
fn tar_paths(out: &Path, paths: &[PathBuf], stage: &Path, staged: &[String]) -> Result<()> {
    let list = out.with_extension("list");
    let mut f = std::fs::File::create(&list)?;
    for p in paths {
        let rel = p.strip_prefix("/").unwrap_or(p);
        f.write_all(rel.as_os_str().as_encoded_bytes())?;
        f.write_all(b"\0")?;
    }
    drop(f);
    let mut cmd = Command::new("tar");
    cmd.args(["--no-recursion", "--null", "-cf"])
        .arg(out)
        .args(["-C", "/", "-T"])
        .arg(&list);
    if !staged.is_empty() {
        // Staged files and their directories.
        let mut names: BTreeSet<String> = BTreeSet::new();
        for n in staged {
            let mut p = Path::new(n).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                names.insert(d.display().to_string());
                p = d.parent();
            }
            names.insert(n.clone());
        }
        cmd.arg("--no-null").arg("-C").arg(stage).args(names);
    }
    let status = cmd.status().context("running tar")?;
    std::fs::remove_file(&list)?;
    if !status.success() {
        bail!("tar of {} failed ({status})", out.display());
    }
    Ok(())
}

/// A gzip layer of `tar` (pigz when installed, as fast as a CI job would make it).
fn layer(tar: &Path, created_by: &str) -> Result<ImageLayer> {
    let diff_id = {
        let mut h = lazypull_converter::digest::Hasher::new();
        let mut f = std::fs::File::open(tar)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.finish()
    };
    let out = Command::new("pigz")
        .args(["-6", "-n", "-c"])
        .arg(tar)
        .output();
    let blob = match out {
        Ok(o) if o.status.success() => o.stdout,
        _ => {
            let tar = std::fs::read(tar)?;
            return Ok(ImageLayer::gzip(&tar, created_by));
        }
    };
    Ok(ImageLayer {
        media_type: sample::MEDIA_TYPE_LAYER_GZIP.into(),
        blob,
        diff_id,
        created_by: created_by.into(),
    })
}
