//! A certificate authority and one certificate per host for libvirt's TLS transport
//! (`qemu+tls://`, port 16514) and QEMU's TLS migration stream, made with `openssl`.
//!
//! The CA lives in `<cluster dir>/pki/ca/` (its key never leaves this machine). Each
//! host gets a directory in libvirt's client `pkipath` layout (`cacert.pem`,
//! `clientcert.pem`, `clientkey.pem`) plus `servercert.pem`/`serverkey.pem` for its
//! libvirtd and `qemu/` (the names QEMU's `migrate_tls_x509_cert_dir` expects). A host's
//! certificate names its IP address (libvirt checks it against the URI) and serves both
//! as server and client: a libvirtd that migrates peer-to-peer is the client of its peer's.
//! Files are created once and kept: a second `testbed up` or `tls` reuses them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{run, write_atomic};

/// Days a certificate is valid.
const DAYS: &str = "3650";

fn openssl(args: &[&str]) -> Result<()> {
    run(Command::new("openssl").args(args))
        .map(|_| ())
        .context("openssl failed (is it installed? scripts/install-deps.sh installs it)")
}

fn key(path: &Path) -> Result<()> {
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &path.to_string_lossy(),
    ])?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

/// The CA's certificate, made if missing.
pub fn ensure_ca(ca_dir: &Path) -> Result<PathBuf> {
    let cert = ca_dir.join("cacert.pem");
    let k = ca_dir.join("cakey.pem");
    if cert.is_file() && k.is_file() {
        return Ok(cert);
    }
    std::fs::create_dir_all(ca_dir)?;
    std::fs::set_permissions(ca_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    key(&k)?;
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &k.to_string_lossy(),
        "-sha256",
        "-days",
        DAYS,
        "-subj",
        "/CN=dvms-launch cluster CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        &cert.to_string_lossy(),
    ])?;
    Ok(cert)
}

/// Host `ip`'s certificate directory `dir` (pkipath layout), made if missing.
pub fn ensure_host(ca_dir: &Path, dir: &Path, ip: &str) -> Result<()> {
    let ip: std::net::IpAddr = ip
        .parse()
        .with_context(|| format!("{ip} is not an IP address: a TLS certificate names one"))?;
    let cert = dir.join("servercert.pem");
    let qemu = dir.join("qemu");
    if cert.is_file() && qemu.join("client-key.pem").is_file() {
        return Ok(());
    }
    let ca_cert = ensure_ca(ca_dir)?;
    std::fs::create_dir_all(&qemu)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let k = dir.join("serverkey.pem");
    key(&k)?;
    let csr = dir.join("host.csr");
    let ext = dir.join("host.ext");
    write_atomic(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n\
             subjectAltName=IP:{ip}\n"
        )
        .as_bytes(),
    )?;
    openssl(&[
        "req",
        "-new",
        "-key",
        &k.to_string_lossy(),
        "-subj",
        &format!("/CN={ip}"),
        "-out",
        &csr.to_string_lossy(),
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr.to_string_lossy(),
        "-CA",
        &ca_cert.to_string_lossy(),
        "-CAkey",
        &ca_dir.join("cakey.pem").to_string_lossy(),
        // A random serial (the leading 0 keeps it positive): no serial file to share.
        "-set_serial",
        &format!("0x0{}", crate::util::random_hex(15)?),
        "-sha256",
        "-days",
        DAYS,
        "-extfile",
        &ext.to_string_lossy(),
        "-out",
        &cert.to_string_lossy(),
    ])?;
    let _ = std::fs::remove_file(&csr);
    let _ = std::fs::remove_file(&ext);
    // The same certificate and key under the names libvirt's client and QEMU look for.
    let copies = [
        ("cacert.pem", ca_cert.clone()),
        ("clientcert.pem", cert.clone()),
        ("clientkey.pem", k.clone()),
        ("qemu/ca-cert.pem", ca_cert),
        ("qemu/server-cert.pem", cert.clone()),
        ("qemu/server-key.pem", k.clone()),
        ("qemu/client-cert.pem", cert),
        ("qemu/client-key.pem", k),
    ];
    for (name, from) in copies {
        std::fs::copy(&from, dir.join(name))
            .with_context(|| format!("cannot copy {} to {}", from.display(), dir.display()))?;
    }
    Ok(())
}

/// A libvirt URI over TLS to `ip`, presenting the client certificate in `pkipath`.
pub fn tls_uri(ip: &str, pkipath: &Path) -> Result<String> {
    let p = pkipath.to_string_lossy();
    // The path goes into a URI query unescaped: keep to characters that need no escaping.
    anyhow::ensure!(
        p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)),
        "{p}: a certificate directory whose path holds only letters, digits and /._-+ is needed for a libvirt URI"
    );
    Ok(format!("qemu+tls://{ip}/system?pkipath={p}"))
}
