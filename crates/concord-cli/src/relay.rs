//! `concord relay`: a self-hosted relay server (Iroh's relay) in the same
//! binary. Devices started with `--relay URL` pointing here can reach each
//! other across networks that have no route between them; the relay only
//! forwards packets that stay end-to-end encrypted between the devices.
//!
//! TLS with the given certificate and key, or plain HTTP only when
//! `--insecure-http` says so (for a LAN or a test network).

use std::net::SocketAddr;
use std::path::PathBuf;

use iroh_relay::server::{CertConfig, RelayConfig, Server, ServerConfig, TlsConfig};

use crate::context::{CliError, CliResult};

/// `concord relay` options.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub listen: String,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure_http: bool,
}

/// Run the relay until SIGINT or SIGTERM; prints `ready` and its URL.
pub fn run(opts: RelayOptions, json: bool) -> CliResult<()> {
    let listen: SocketAddr = opts.listen.parse().map_err(|_| {
        CliError::new(format!(
            "invalid --listen address {:?}; expected IP:PORT such as 0.0.0.0:3340",
            opts.listen
        ))
    })?;
    let tls = match (&opts.cert, &opts.key, opts.insecure_http) {
        (Some(cert), Some(key), false) => Some(tls_config(cert, key)?),
        (None, None, true) => None,
        (_, _, true) => {
            return Err(CliError::new(
                "--insecure-http serves plain HTTP; do not combine it with --cert/--key",
            ))
        }
        _ => {
            return Err(CliError::new(
                "give both --cert PEM and --key PEM, or --insecure-http for plain HTTP on a trusted network",
            ))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen, tls, json))
}

async fn serve(listen: SocketAddr, tls: Option<rustls::ServerConfig>, json: bool) -> CliResult<()> {
    let mut relay = RelayConfig::new(listen);
    if let Some(server_config) = tls {
        // HTTPS on the given address; the plain HTTP side (captive-portal
        // probe only) on any free port of the same IP.
        relay.http_bind_addr = SocketAddr::new(listen.ip(), 0);
        relay.tls = Some(TlsConfig::new(listen, CertConfig::Manual { server_config }));
    }
    // No QUIC address discovery and no metrics socket: one HTTP(S) port.
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    let server = Server::spawn(config)
        .await
        .map_err(|e| CliError::new(format!("cannot start the relay on {listen}: {e}")))?;
    let url = match (server.https_addr(), server.http_addr()) {
        (Some(addr), _) => format!("https://{}", shown(addr)),
        (None, Some(addr)) => format!("http://{}", shown(addr)),
        (None, None) => return Err(CliError::new("the relay bound no address")),
    };
    if json {
        println!("{}", serde_json::json!({ "url": url }));
    } else {
        println!("ready");
        println!("{url}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.shutdown().await.ok();
    Ok(())
}

/// An address as devices should dial it: an unspecified IP becomes the
/// loopback one (replace it with the host's name or LAN address).
fn shown(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

/// A TLS server configuration from a PEM certificate chain and key.
fn tls_config(cert: &PathBuf, key: &PathBuf) -> CliResult<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CliError::new(format!("cannot read certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(CliError::new(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| CliError::new(format!("cannot read key {}: {e}", key.display())))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .map_err(|e| CliError::new(format!("invalid certificate or key: {e}")))
}
