//! Talking to the kubelet over unix sockets in its device plugin folder
//! (`/var/lib/kubelet/device-plugins`): serve the plugin on `gpuplane.sock`, register it on
//! `kubelet.sock`, and start over when the kubelet restarts — a restarting kubelet removes every socket
//! in the folder, so the plugin watches its own and re-registers when it disappears.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server};

use crate::DeviceError;
use crate::api::device_plugin_server::DevicePluginServer;
use crate::api::registration_client::RegistrationClient;
use crate::api::{DevicePluginOptions, RegisterRequest};
use crate::plugin::{GpuPlugin, RESOURCE_NAME};

/// The API version the plugin speaks.
pub const API_VERSION: &str = "v1beta1";
/// The kubelet's registration socket in the plugin folder.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The plugin's socket in the plugin folder.
pub const PLUGIN_SOCKET: &str = "gpuplane.sock";

/// How often the plugin checks that its socket is still there.
const SOCKET_CHECK: Duration = Duration::from_millis(200);
/// How long a stopping server may take to close its connections.
const GRACE: Duration = Duration::from_millis(500);
/// How long to wait between registration attempts while the kubelet is away.
const REGISTER_RETRY: Duration = Duration::from_millis(500);

/// A gRPC channel over a unix socket (the URI is a placeholder the connector ignores).
pub async fn unix_channel(path: &Path) -> Result<Channel, DeviceError> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| DeviceError::Kubelet(format!("{shown}: {e}")))
}

/// Registers the plugin with the kubelet once.
pub async fn register(dir: &Path) -> Result<(), DeviceError> {
    let kubelet = dir.join(KUBELET_SOCKET);
    let mut client = RegistrationClient::new(unix_channel(&kubelet).await?);
    client
        .register(RegisterRequest {
            version: API_VERSION.to_owned(),
            endpoint: PLUGIN_SOCKET.to_owned(),
            resource_name: RESOURCE_NAME.to_owned(),
            options: Some(DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: false }),
        })
        .await
        .map_err(|e| DeviceError::Kubelet(format!("{}: registration refused: {}", kubelet.display(), e.message())))?;
    Ok(())
}

/// Serves the plugin in `dir` until `stop` resolves: bind the socket, register (retrying while the
/// kubelet is away), and when the socket disappears (the kubelet restarted) do it all again.
pub async fn run(
    plugin: GpuPlugin,
    dir: PathBuf,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DeviceError> {
    tokio::pin!(stop);
    loop {
        let socket = dir.join(PLUGIN_SOCKET);
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DeviceError::Kubelet(format!("{}: cannot remove the old socket: {e}", socket.display())));
            }
        }
        let listener = UnixListener::bind(&socket)
            .map_err(|e| DeviceError::Kubelet(format!("{}: cannot listen: {e}", socket.display())))?;
        let (shutdown, on_shutdown) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::builder().add_service(DevicePluginServer::new(plugin.clone())).serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                async {
                    let _ = on_shutdown.await;
                },
            ),
        );
        // Register, retrying while the kubelet's socket is missing or refuses connections.
        loop {
            tokio::select! {
                () = &mut stop => {
                    close(shutdown, server).await;
                    return Ok(());
                }
                registered = register(&dir) => match registered {
                    Ok(()) => {
                        tracing::info!(resource = RESOURCE_NAME, socket = %socket.display(), "registered with the kubelet");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "registration failed; retrying");
                        tokio::time::sleep(REGISTER_RETRY).await;
                    }
                },
            }
        }
        // Serve until the socket disappears (kubelet restart) or we are told to stop.
        loop {
            tokio::select! {
                () = &mut stop => {
                    close(shutdown, server).await;
                    return Ok(());
                }
                () = tokio::time::sleep(SOCKET_CHECK) => {
                    if !socket.exists() {
                        tracing::info!(socket = %socket.display(), "socket removed (kubelet restart); registering again");
                        break;
                    }
                }
            }
        }
        close(shutdown, server).await;
    }
}

/// Stops a server: graceful for a moment (open ListAndWatch streams would hold it forever), then cut.
async fn close<T>(shutdown: tokio::sync::oneshot::Sender<()>, server: tokio::task::JoinHandle<T>) {
    let _ = shutdown.send(());
    let abort = server.abort_handle();
    if tokio::time::timeout(GRACE, server).await.is_err() {
        abort.abort();
    }
}
