//! Disk preparation at run time (never in `render`): qcow2 overlays over container disks,
//! empty disks, cloud-init and config ISOs (built with `xorriso`, written atomically: staged
//! next to the target, then renamed), and existence checks for everything else.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::plan::{CloudInitFlavor, DataSource, PrepStep};
use super::DomainError;

/// Performs every step, in order. The first failure stops and names the path.
pub fn prepare(steps: &[PrepStep]) -> Result<(), DomainError> {
    for step in steps {
        prepare_one(step)?;
    }
    Ok(())
}

fn prepare_one(step: &PrepStep) -> Result<(), DomainError> {
    match step {
        PrepStep::Directory { path } => {
            std::fs::create_dir_all(path).map_err(|e| io("creating the directory", path, e))
        }
        PrepStep::Overlay {
            volume,
            backing,
            overlay,
        } => create_overlay(volume, backing, overlay),
        PrepStep::EmptyDisk {
            path, size_bytes, ..
        } => create_empty_disk(path, *size_bytes),
        PrepStep::CloudInit {
            volume,
            iso,
            flavor,
            instance_id,
            hostname,
            user_data,
            network_data,
        } => {
            let user = read_source(volume, user_data)?;
            let network = network_data
                .as_ref()
                .map(|n| read_source(volume, n))
                .transpose()?;
            let files = cloud_init_files(*flavor, instance_id, hostname, &user, network.as_deref());
            let label = match flavor {
                CloudInitFlavor::NoCloud => "cidata",
                CloudInitFlavor::ConfigDrive => "config-2",
            };
            build_iso(iso, label, &files)
        }
        PrepStep::DirIso {
            volume,
            iso,
            source_dir,
            label,
        } => {
            if !source_dir.is_dir() {
                return Err(DomainError::Missing {
                    what: format!("the mounted directory of volume {volume:?}"),
                    path: source_dir.clone(),
                    hint:
                        "the pod must mount the configMap/secret/serviceAccount/downwardAPI there"
                            .into(),
                });
            }
            let files = collect_dir(source_dir)?;
            build_iso(iso, label, &files)
        }
        PrepStep::MustExist { volume, path, what } => {
            std::fs::metadata(path).map(|_| ()).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    DomainError::Missing {
                        what: format!("{what} of volume {volume:?}"),
                        path: path.clone(),
                        hint: "check the pod's volume mounts".into(),
                    }
                } else {
                    DomainError::Io {
                        op: format!("checking {what} of volume {volume:?}"),
                        path: path.clone(),
                        source: e,
                    }
                }
            })
        }
        PrepStep::HostDiskCreate {
            path, size_bytes, ..
        } => {
            if path.exists() {
                return Ok(());
            }
            let parent = path.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return Err(DomainError::Missing {
                    what: "the directory of the hostDisk".into(),
                    path: parent.to_path_buf(),
                    hint: "mount the host directory into the pod".into(),
                });
            }
            let f = std::fs::File::create_new(path)
                .map_err(|e| io("creating the hostDisk", path, e))?;
            f.set_len(*size_bytes)
                .map_err(|e| io("sizing the hostDisk", path, e))
        }
    }
}

fn io(op: &str, path: &Path, source: std::io::Error) -> DomainError {
    DomainError::Io {
        op: op.into(),
        path: path.to_path_buf(),
        source,
    }
}

fn mkdir_parent(path: &Path) -> Result<(), DomainError> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| io("creating the directory", p, e))?;
    }
    Ok(())
}

/// A path next to `target` for staging, unique to this process.
fn staging(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

fn run_tool(tool: &str, args: &[&std::ffi::OsStr], path: &Path) -> Result<Vec<u8>, DomainError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| DomainError::Tool {
            tool: tool.into(),
            path: path.to_path_buf(),
            message: format!("cannot run {tool}: {e} (install it: see scripts/setup.sh)"),
            missing: e.kind() == std::io::ErrorKind::NotFound,
        })?;
    if !out.status.success() {
        return Err(DomainError::Tool {
            tool: tool.into(),
            path: path.to_path_buf(),
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            missing: false,
        });
    }
    Ok(out.stdout)
}

/// The image format `qemu-img info` detects.
pub fn detect_format(path: &Path) -> Result<String, DomainError> {
    let json = run_tool(
        "qemu-img",
        &["info".as_ref(), "--output=json".as_ref(), path.as_os_str()],
        path,
    )?;
    let v: serde_json::Value = serde_json::from_slice(&json).map_err(|e| DomainError::Tool {
        tool: "qemu-img".into(),
        path: path.to_path_buf(),
        message: format!("unreadable `qemu-img info` output: {e}"),
        missing: false,
    })?;
    v.get("format")
        .and_then(|f| f.as_str())
        .map(str::to_string)
        .ok_or_else(|| DomainError::Tool {
            tool: "qemu-img".into(),
            path: path.to_path_buf(),
            message: "`qemu-img info` names no format".into(),
            missing: false,
        })
}

/// A qcow2 overlay over `backing` (format detected), created only if missing.
pub fn create_overlay(volume: &str, backing: &Path, overlay: &Path) -> Result<(), DomainError> {
    if overlay.exists() {
        return Ok(());
    }
    match std::fs::File::open(backing) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DomainError::Missing {
                what: format!("the image of volume {volume:?}"),
                path: backing.to_path_buf(),
                hint: "the container disk (or PVC) must be mounted there".into(),
            })
        }
        Err(e) => {
            return Err(io(
                &format!("reading the image of volume {volume:?}"),
                backing,
                e,
            ))
        }
    }
    let fmt = detect_format(backing)?;
    mkdir_parent(overlay)?;
    let stage = staging(overlay, "partial");
    let _ = std::fs::remove_file(&stage);
    let res = run_tool(
        "qemu-img",
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            fmt.as_ref(),
            "-b".as_ref(),
            backing.as_os_str(),
            stage.as_os_str(),
        ],
        overlay,
    );
    if let Err(e) = res {
        let _ = std::fs::remove_file(&stage);
        return Err(e);
    }
    std::fs::rename(&stage, overlay).map_err(|e| {
        let _ = std::fs::remove_file(&stage);
        io("renaming the overlay into place", overlay, e)
    })
}

/// A qcow2 disk of `size_bytes` rounded down to 1 MiB, created only if missing.
pub fn create_empty_disk(path: &Path, size_bytes: u64) -> Result<(), DomainError> {
    if path.exists() {
        return Ok(());
    }
    let size = size_bytes & !((1 << 20) - 1);
    mkdir_parent(path)?;
    let stage = staging(path, "partial");
    let _ = std::fs::remove_file(&stage);
    let size_s = size.to_string();
    let res = run_tool(
        "qemu-img",
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            stage.as_os_str(),
            size_s.as_ref(),
        ],
        path,
    );
    if let Err(e) = res {
        let _ = std::fs::remove_file(&stage);
        return Err(e);
    }
    std::fs::rename(&stage, path).map_err(|e| io("renaming the empty disk into place", path, e))
}

fn read_source(volume: &str, src: &DataSource) -> Result<Vec<u8>, DomainError> {
    match src {
        DataSource::Inline(t) => Ok(t.as_bytes().to_vec()),
        DataSource::File(candidates) => {
            for c in candidates {
                match std::fs::read(c) {
                    Ok(b) => return Ok(b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(io(
                            &format!("reading cloud-init data of volume {volume:?}"),
                            c,
                            e,
                        ))
                    }
                }
            }
            Err(DomainError::Missing {
                what: format!("the cloud-init secret of volume {volume:?}"),
                path: candidates.first().cloned().unwrap_or_default(),
                hint: "the pod must mount the referenced secret there".into(),
            })
        }
    }
}

/// The files of a cloud-init ISO: NoCloud gets `meta-data`, `user-data` and (if given)
/// `network-config`; ConfigDrive gets `openstack/latest/{meta_data.json,user_data,network_data.json}`.
pub fn cloud_init_files(
    flavor: CloudInitFlavor,
    instance_id: &str,
    hostname: &str,
    user_data: &[u8],
    network: Option<&[u8]>,
) -> Vec<(String, Vec<u8>)> {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut files = Vec::new();
    match flavor {
        CloudInitFlavor::NoCloud => {
            files.push((
                "meta-data".into(),
                format!(
                    "instance-id: {}\nlocal-hostname: {}\n",
                    q(instance_id),
                    q(hostname)
                )
                .into_bytes(),
            ));
            files.push(("user-data".into(), user_data.to_vec()));
            if let Some(n) = network {
                files.push(("network-config".into(), n.to_vec()));
            }
        }
        CloudInitFlavor::ConfigDrive => {
            let meta = serde_json::json!({
                "instance_id": instance_id,
                "uuid": instance_id,
                "hostname": hostname,
                "name": hostname,
            });
            files.push((
                "openstack/latest/meta_data.json".into(),
                meta.to_string().into_bytes(),
            ));
            files.push(("openstack/latest/user_data".into(), user_data.to_vec()));
            if let Some(n) = network {
                files.push(("openstack/latest/network_data.json".into(), n.to_vec()));
            }
        }
    }
    files
}

fn collect_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, DomainError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| io("listing", &d, e))?;
        for e in entries {
            let e = e.map_err(|e| io("listing", &d, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            // Kubernetes' atomic-writer keeps its bookkeeping in ..data / ..<timestamp>.
            if name.starts_with("..") {
                continue;
            }
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let p = e.path();
            if p.is_dir() {
                stack.push((p, rel));
            } else {
                let bytes = std::fs::read(&p).map_err(|e| io("reading", &p, e))?;
                out.push((rel, bytes));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Builds an ISO9660 (Rock Ridge + Joliet) image with `xorriso`: the files are staged in a
/// directory next to the ISO, the image is written to a staging file, then renamed into place.
pub fn build_iso(iso: &Path, label: &str, files: &[(String, Vec<u8>)]) -> Result<(), DomainError> {
    mkdir_parent(iso)?;
    let stage_dir = staging(iso, "files");
    let stage_iso = staging(iso, "partial");
    let _ = std::fs::remove_dir_all(&stage_dir);
    let _ = std::fs::remove_file(&stage_iso);
    let result = (|| {
        std::fs::create_dir_all(&stage_dir).map_err(|e| io("creating", &stage_dir, e))?;
        for (rel, bytes) in files {
            let p = stage_dir.join(rel);
            mkdir_parent(&p)?;
            std::fs::write(&p, bytes).map_err(|e| io("writing", &p, e))?;
        }
        run_tool(
            "xorriso",
            &[
                "-as".as_ref(),
                "mkisofs".as_ref(),
                "-quiet".as_ref(),
                "-output".as_ref(),
                stage_iso.as_os_str(),
                "-volid".as_ref(),
                label.as_ref(),
                "-joliet".as_ref(),
                "-rock".as_ref(),
                stage_dir.as_os_str(),
            ],
            iso,
        )?;
        std::fs::rename(&stage_iso, iso).map_err(|e| io("renaming the ISO into place", iso, e))
    })();
    let _ = std::fs::remove_dir_all(&stage_dir);
    if result.is_err() {
        let _ = std::fs::remove_file(&stage_iso);
    }
    result
}
