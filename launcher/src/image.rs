//! Guest images.
//!
//! - Testbed guest: Debian's cloud kernel plus a busybox initramfs whose `/init` is
//!   `guest/init.sh`, with `cpulimit` (and the libraries it links) inside so that load is
//!   injected *in* the guest, as the seeds' experiments did. Built once and cached under
//!   a hash of every input; rebuilt only when one changes.
//! - Real clusters: a qcow2 base image and one copy-on-write overlay per VM.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::util::{run, run_stdout, write_atomic};

pub const GUEST_INIT: &str = include_str!("../guest/init.sh");
/// Bumped whenever the way the image is built changes (it is part of the cache key).
const IMAGE_FORMAT: u32 = 4;
/// Debian metapackage whose dependency is the current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// virtio modules the init loads (memory balloon: stats and `setmem`).
const MODULES: [&str; 6] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_balloon",
];

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Hash of the inputs; names the cache directory.
    pub id: String,
}

/// Ensures the testbed guest image exists under `cache` and returns it.
/// `kernel` overrides the Debian kernel (then no virtio modules are added).
pub fn ensure_testbed_image(
    cache: &Path,
    kernel: Option<&Path>,
    force: bool,
) -> Result<GuestImage> {
    let (vmlinuz, modules) = match kernel {
        Some(k) => (k.to_path_buf(), Vec::new()),
        None => debian_kernel(cache)?,
    };
    let busybox = find_program("busybox", &["/bin/busybox", "/usr/bin/busybox"])?;
    let cpulimit = find_program("cpulimit", &["/usr/bin/cpulimit", "/usr/sbin/cpulimit"])?;
    let libs = shared_libraries(&cpulimit)?;

    // Everything that ends up in the image, with the path it gets inside.
    let mut files: Vec<(String, PathBuf, u32)> = vec![
        ("bin/busybox".into(), busybox, 0o755),
        ("bin/cpulimit".into(), cpulimit, 0o755),
    ];
    for lib in &libs {
        let inside = lib.to_string_lossy().trim_start_matches('/').to_owned();
        files.push((inside, lib.clone(), 0o755));
    }
    for m in &modules {
        let name = m.file_name().and_then(|n| n.to_str()).unwrap_or("m.ko");
        files.push((format!("lib/modules/{name}"), m.clone(), 0o644));
    }

    let mut h = Sha256::new();
    h.update(IMAGE_FORMAT.to_le_bytes());
    h.update(GUEST_INIT.as_bytes());
    h.update(
        std::fs::read(&vmlinuz)
            .with_context(|| format!("cannot read kernel {}", vmlinuz.display()))?,
    );
    for (inside, src, _) in &files {
        h.update(inside.as_bytes());
        h.update(std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?);
    }
    let id: String = h
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = cache.join(format!("guest-{id}"));
    let image = GuestImage {
        kernel: dir.join("kernel"),
        initrd: dir.join("initrd"),
        id,
    };
    if !force && image.kernel.is_file() && image.initrd.is_file() {
        return Ok(image);
    }

    let mut cpio = CpioWriter::default();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "lib",
        "lib/modules",
        "lib64",
        "etc",
    ] {
        cpio.dir(d);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("init", GUEST_INIT.as_bytes(), 0o755);
    for (inside, src, mode) in &files {
        if let Some(parent) = Path::new(inside).parent() {
            let mut p = PathBuf::new();
            for c in parent.components() {
                p.push(c);
                cpio.dir(&p.to_string_lossy());
            }
        }
        cpio.file(inside, &std::fs::read(src)?, *mode);
    }
    // Applets as links made here, not by `busybox --install` at every boot.
    let applets = run_stdout(Command::new(&files[0].1).arg("--list"))?;
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        cpio.symlink(&format!("bin/{a}"), "busybox");
    }
    std::fs::create_dir_all(&dir)?;
    // Uncompressed: unpacking a gzip initramfs cost 0.27 s of guest boot under TCG.
    write_atomic(&image.initrd, &cpio.finish())?;
    let bz = std::fs::read(&vmlinuz)?;
    // An uncompressed ELF kernel with a PVH entry boots without the real-mode setup and
    // the in-guest decompression: measured 23 % less CPU per boot under TCG.
    let kernel = pvh_kernel(&bz).unwrap_or(bz);
    write_atomic(&image.kernel, &kernel)?;
    Ok(image)
}

/// The ELF `vmlinux` inside a bzImage, if its payload is LZ4 (legacy) or gzip and the ELF
/// has a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); `None` means: boot the bzImage.
pub fn pvh_kernel(bz: &[u8]) -> Option<Vec<u8>> {
    // Boot protocol: setup_sects at 0x1f1, "HdrS" at 0x202, payload_offset/length at 0x248.
    if bz.len() < 0x250 || &bz[0x202..0x206] != b"HdrS" {
        return None;
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let word = |o: usize| u32::from_le_bytes([bz[o], bz[o + 1], bz[o + 2], bz[o + 3]]) as usize;
    let start = (setup_sects + 1) * 512 + word(0x248);
    let payload = bz.get(start..start.checked_add(word(0x24c))?)?;
    let elf = if payload.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        lz4_legacy(&payload[4..])?
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(payload), &mut out).ok()?;
        out
    } else {
        return None;
    };
    (elf.starts_with(b"\x7fELF") && has_pvh_note(&elf)).then_some(elf)
}

/// LZ4 "legacy" frames (what `lz4 -l` writes for kernels): blocks of at most 8 MiB, each
/// behind its 32-bit compressed size; the kernel build appends the total size after them.
fn lz4_legacy(mut data: &[u8]) -> Option<Vec<u8>> {
    const BLOCK: usize = 8 << 20;
    let mut out = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    while data.len() > 4 {
        let size = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let Some(block) = data.get(4..4 + size) else {
            break;
        };
        let n = lz4_flex::block::decompress_into(block, &mut buf).ok()?;
        out.extend_from_slice(&buf[..n]);
        data = &data[4 + size..];
    }
    (!out.is_empty()).then_some(out)
}

/// Whether a 64-bit ELF has a "Xen" note of type 18 (the PVH 32-bit entry point).
fn has_pvh_note(elf: &[u8]) -> bool {
    let u16at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64at(0x20), u16at(0x36), u16at(0x38))
    else {
        return false;
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32at(ph) != Some(4) {
            continue; // PT_NOTE only
        }
        let (Some(off), Some(size)) = (u64at(ph + 8), u64at(ph + 32)) else {
            continue;
        };
        let mut p = off;
        while p + 12 <= off + size {
            let (Some(namesz), Some(descsz), Some(kind)) = (u32at(p), u32at(p + 4), u32at(p + 8))
            else {
                break;
            };
            let name = elf.get(p + 12..p + 12 + namesz).unwrap_or(&[]);
            if kind == 18 && name.starts_with(b"Xen") {
                return true;
            }
            p += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    false
}

fn find_program(name: &str, candidates: &[&str]) -> Result<PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} not found (apt-get install {}; or run scripts/install-deps.sh)",
                match name {
                    "busybox" => "busybox-static",
                    other => other,
                }
            )
        })
}

/// The shared libraries a dynamic executable needs (from `ldd`), loader included.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Downloads (once) and unpacks Debian's cloud kernel; returns vmlinuz and the modules.
fn debian_kernel(cache: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let (pkg, version) = resolve_kernel_package(cache)?;
    let dir = cache.join(format!("kernel-{pkg}_{version}"));
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        let tmp = cache.join(format!(".kernel-download-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("x"))?;
        // apt drops privileges to _apt for downloads; let it write here.
        let _ = Command::new("chown").args(["_apt"]).arg(&tmp).status();
        let got = run(Command::new("apt-get")
            .args(["download", "-q", &pkg])
            .current_dir(&tmp))
        .and_then(|_| {
            let deb = std::fs::read_dir(&tmp)?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .context("apt-get download produced no .deb")?;
            run(Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(tmp.join("x")))?;
            let boot = tmp.join("x/boot");
            let kernel = std::fs::read_dir(&boot)?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-"))
                })
                .context("no vmlinuz in the kernel package")?;
            let staged = tmp.join("stage");
            std::fs::create_dir_all(staged.join("modules"))?;
            std::fs::copy(&kernel, staged.join("vmlinuz"))?;
            let virtio = glob_one_dir(&tmp.join("x/lib/modules"), "kernel/drivers/virtio")?;
            for m in MODULES {
                let src = virtio.join(format!("{m}.ko"));
                if src.is_file() {
                    std::fs::copy(&src, staged.join("modules").join(format!("{m}.ko")))?;
                }
            }
            // Another process may have fetched it meanwhile: keep the first.
            if !dir.join("vmlinuz").is_file() {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::rename(&staged, &dir)?;
            }
            Ok(())
        });
        let _ = std::fs::remove_dir_all(&tmp);
        got.with_context(|| format!("cannot fetch the guest kernel {pkg} {version}"))?;
    }
    let mut modules: Vec<PathBuf> = MODULES
        .iter()
        .map(|m| dir.join("modules").join(format!("{m}.ko")))
        .filter(|p| p.is_file())
        .collect();
    modules.sort();
    Ok((vmlinuz, modules))
}

/// The kernel package and version behind the metapackage. `apt-cache` costs about two
/// seconds of CPU here, so the answer is kept until apt's package lists change.
fn resolve_kernel_package(cache: &Path) -> Result<(String, String)> {
    let lists_stamp = std::fs::metadata("/var/lib/apt/lists")
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string())
        .unwrap_or_default();
    let memo = cache.join("kernel-package.txt");
    if let Ok(text) = std::fs::read_to_string(&memo) {
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() == 3 && f[0] == lists_stamp && !lists_stamp.is_empty() {
            return Ok((f[1].to_owned(), f[2].to_owned()));
        }
    }
    let deps = run_stdout(Command::new("apt-cache").args(["depends", KERNEL_META]))?;
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .with_context(|| format!("cannot resolve {KERNEL_META}: run `apt-get update` first"))?;
    let show = run_stdout(Command::new("apt-cache").args(["show", "--no-all-versions", &pkg]))?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .with_context(|| format!("no version for {pkg}"))?
        .to_owned();
    std::fs::create_dir_all(cache)?;
    write_atomic(&memo, format!("{lists_stamp} {pkg} {version}\n").as_bytes())?;
    Ok((pkg, version))
}

/// `root/<single version dir>/sub`.
fn glob_one_dir(root: &Path, sub: &str) -> Result<PathBuf> {
    let first = std::fs::read_dir(root)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .with_context(|| format!("nothing in {}", root.display()))?;
    Ok(first.join(sub))
}

/// The command that creates (or replaces) a copy-on-write overlay of `base` at
/// `overlay`, directory included, to run on the host that will run the VM.
pub fn overlay_command(base: &Path, overlay: &Path) -> Vec<String> {
    let q = |p: &Path| crate::util::shell_quote(&p.to_string_lossy());
    let dir = overlay.parent().unwrap_or(Path::new("/"));
    let script = format!(
        "mkdir -p {} && exec qemu-img create -q -f qcow2 -F qcow2 -b {} {}",
        q(dir),
        q(base),
        q(overlay)
    );
    vec!["sh".into(), "-c".into(), script]
}

/// Checks that a file is a qcow2 image (magic `QFI\xfb`).
pub fn check_qcow2(path: &Path) -> Result<()> {
    let mut magic = [0u8; 4];
    use std::io::Read;
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .with_context(|| format!("cannot read base image {}", path.display()))?;
    if &magic != b"QFI\xfb" {
        bail!("{} is not a qcow2 image", path.display());
    }
    Ok(())
}

/// A minimal writer of the `newc` cpio format the kernel unpacks as initramfs.
#[derive(Default)]
struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_owned()) {
            self.entry(name, 0o040755, (0, 0), &[]);
        }
    }
    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }
    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }
    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cpio_archive_lists_with_gnu_cpio() {
        let mut c = CpioWriter::default();
        c.dir("bin");
        c.file("bin/hello", b"hi\n", 0o755);
        c.char_device("console", 5, 1);
        c.symlink("bin/sh", "hello");
        let bytes = c.finish();
        assert_eq!(bytes.len() % 4, 0);
        let mut child = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cpio is installed by scripts/install-deps.sh");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "bin\nbin/hello\nconsole\nbin/sh\n"
        );
    }

    #[test]
    fn pvh_extraction_refuses_what_it_cannot_boot() {
        assert!(pvh_kernel(b"not a kernel").is_none());
        let mut fake = vec![0u8; 4096];
        fake[0x202..0x206].copy_from_slice(b"HdrS");
        fake[0x1f1] = 1;
        fake[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        fake[0x24c..0x250].copy_from_slice(&16u32.to_le_bytes());
        assert!(pvh_kernel(&fake).is_none(), "unknown compression");
        // A gzip payload that is not an ELF with a PVH note.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"\x7fELF and nothing else").unwrap();
        let payload = gz.finish().unwrap();
        fake[1024..1024 + payload.len()].copy_from_slice(&payload);
        fake[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        assert!(pvh_kernel(&fake).is_none(), "no PVH note");
    }

    #[test]
    fn lz4_legacy_blocks_decode() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let block = lz4_flex::block::compress(&data);
        let mut framed = (block.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&block);
        framed.extend_from_slice(&(data.len() as u32).to_le_bytes()); // the size trailer
        assert_eq!(lz4_legacy(&framed).unwrap(), data);
    }

    #[test]
    fn overlay_is_a_real_qcow2_on_its_base() {
        let dir = std::env::temp_dir().join(format!("dvms-overlay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("64M"))
        .unwrap();
        check_qcow2(&base).unwrap();
        let overlay = dir.join("overlays/vm1.qcow2");
        let cmd = overlay_command(&base, &overlay);
        run(Command::new(&cmd[0]).args(&cmd[1..])).unwrap();
        let info = run_stdout(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(&overlay),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["format"], "qcow2");
        assert_eq!(v["backing-filename"], base.to_str().unwrap());
        assert!(check_qcow2(&dir.join("missing")).is_err());
        std::fs::write(dir.join("raw"), b"not an image").unwrap();
        assert!(check_qcow2(&dir.join("raw"))
            .unwrap_err()
            .to_string()
            .contains("not a qcow2"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
