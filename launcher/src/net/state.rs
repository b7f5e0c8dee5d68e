//! The recorded state: what the pod looked like before we touched it, the plan we applied,
//! and the original values of the sysctls we change. Written atomically to
//! `<run-dir>/network-state.json` BEFORE the first change; a re-run after a crash converges on
//! it instead of rediscovering already-plumbed interfaces, and teardown restores from it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::discover::DiscoveredPod;
use super::plan::{NetPlan, Step};
use super::{NetError, STATE_FILE};

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedState {
    pub version: u32,
    /// The pod as discovered before any change.
    pub pod: DiscoveredPod,
    pub plan: NetPlan,
    /// `/proc/sys` path (relative, e.g. `net/ipv4/conf/all/arp_ignore`) → original value, for
    /// every sysctl the plan sets that existed before setup. Sysctls of links we create are
    /// absent: they vanish with the link.
    pub sysctls: BTreeMap<String, String>,
}

impl RecordedState {
    /// Records the plan and reads the current value of each sysctl it will change.
    pub fn new(pod: DiscoveredPod, plan: NetPlan) -> Self {
        let mut sysctls = BTreeMap::new();
        for s in &plan.steps {
            if let Step::SetSysctl { path, .. } = s {
                if let Ok(v) = std::fs::read_to_string(Path::new("/proc/sys").join(path)) {
                    sysctls.insert(path.clone(), v.trim().to_string());
                }
            }
        }
        RecordedState {
            version: STATE_VERSION,
            pod,
            plan,
            sysctls,
        }
    }
}

/// Reads the state file; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<RecordedState>, NetError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NetError::Io {
                operation: "reading".into(),
                object: path.display().to_string(),
                source,
            })
        }
    };
    let st: RecordedState = serde_json::from_str(&text).map_err(|e| NetError::Conflict {
        object: path.display().to_string(),
        message: format!("the recorded network state is unreadable ({e}); it was not written by this launcher version"),
    })?;
    if st.version != STATE_VERSION {
        return Err(NetError::Conflict {
            object: path.display().to_string(),
            message: format!(
                "recorded by state version {}, this launcher reads version {STATE_VERSION}",
                st.version
            ),
        });
    }
    Ok(Some(st))
}

/// Writes the state atomically: a temporary file in the same directory, then rename. No
/// fsync: the crashes we converge from are process crashes (the file is complete or absent);
/// a node crash takes the pod's network namespace with it, and `<run-dir>` is a tmpfs in a pod.
pub fn save(run_dir: &Path, st: &RecordedState) -> Result<PathBuf, NetError> {
    let io = |operation: &str, object: &Path| {
        let operation = operation.to_string();
        let object = object.display().to_string();
        move |source| NetError::Io {
            operation,
            object,
            source,
        }
    };
    std::fs::create_dir_all(run_dir).map_err(io("creating", run_dir))?;
    let path = run_dir.join(STATE_FILE);
    let tmp = run_dir.join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(st).map_err(|e| NetError::Other(e.to_string()))?;
    {
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&text).map_err(io("writing", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
    Ok(path)
}

pub fn remove(path: &Path) -> Result<(), NetError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetError::Io {
            operation: "removing".into(),
            object: path.display().to_string(),
            source,
        }),
    }
}

/// Without a state file, plumbing traces mean someone (a crashed launcher whose run-dir was
/// lost, or another tool) already changed the pod: the "original" state can no longer be
/// discovered, so refuse. Traces: any link named `k6t-*` or `*-nic`, or any link the plan
/// would create.
pub fn refuse_if_plumbed(
    pod: &DiscoveredPod,
    plan: Option<&NetPlan>,
    state_path: &Path,
) -> Result<(), NetError> {
    let mut created: Vec<&str> = Vec::new();
    if let Some(plan) = plan {
        for s in &plan.steps {
            match s {
                Step::CreateBridge { name, .. }
                | Step::CreateTap { name, .. }
                | Step::CreateMacvlan { name, .. } => created.push(name),
                Step::CreateStandIn { peer, .. } => created.push(peer),
                Step::Rename { to, .. } => created.push(to),
                _ => {}
            }
        }
    }
    let evidence: Vec<String> = pod
        .interfaces
        .iter()
        .filter(|i| {
            i.name.starts_with("k6t-")
                || i.name.ends_with("-nic")
                || created.contains(&i.name.as_str())
        })
        .map(|i| format!("link {:?} exists", i.name))
        .collect();
    if evidence.is_empty() {
        Ok(())
    } else {
        Err(NetError::PlumbedWithoutState {
            evidence: evidence.join(", "),
            state: state_path.to_path_buf(),
        })
    }
}
