//! The socket side of the DHCP servers: one supervised tokio task per interface.
//!
//! Contract used by `net` (`network setup --serve`) and `supervise` (`run`):
//!
//! ```ignore
//! let servers = Dhcp4Servers::start(configs).await?; // sockets bound before this returns
//! // ... VM runs ...
//! servers.shutdown().await;
//! ```

use super::{DhcpError, V4Config};

/// Running DHCPv4 servers, one per [`V4Config`].
pub struct Dhcp4Servers {
    _configs: Vec<V4Config>,
}

impl Dhcp4Servers {
    /// Binds every server's socket (so a bind error is returned here, naming the interface),
    /// then serves in background tasks on the current tokio runtime.
    pub async fn start(configs: Vec<V4Config>) -> Result<Self, DhcpError> {
        let _ = configs;
        Err(DhcpError::Other(
            "the DHCPv4 server is not implemented yet".into(),
        ))
    }

    /// Stops every server and waits for its task to end.
    pub async fn shutdown(self) {}
}
