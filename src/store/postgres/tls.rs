//! TLS to PostgreSQL: when a connection uses it ([`tls_required`]), what it trusts
//! ([`client_config`]) and the adapter that lets tokio-postgres speak it ([`MakeRustls`]).
//!
//! Decisions:
//! - Only `sslmode=require` turns TLS on; `disable`, `prefer` and no `sslmode` (the driver's
//!   default is `prefer`) mean no TLS at all, exactly as before TLS was built in. A `prefer`
//!   that tried TLS would meet Debian's stock server (`ssl = on` with a self-signed "snakeoil"
//!   certificate) and, verified, fail where a plain connection works today.
//! - With TLS the server's certificate chain *and* its name (DNS name, or IP address SAN
//!   for an IP host) are always verified: rustls has no mode that skips it. This is stricter
//!   than libpq's `require`, which encrypts without verifying (libpq's `verify-full` is the
//!   equivalent). The name checked is the URL's `host`; `hostaddr`, when set, is only where
//!   the socket goes.
//! - Trust roots: the system's CA certificates through `rustls-native-certs`, plus the
//!   certificates of `[store] ca_file` when set (a provider's CA bundle). Chosen over
//!   `rustls-platform-verifier` because the roots are one [`RootCertStore`] that the file's
//!   certificates join, verified by rustls's own WebPKI verifier with its exact errors
//!   ("invalid peer certificate: UnknownIssuer"); on Linux the platform verifier reads the
//!   same system files anyway. The roots are read once per [`client_config`], i.e. per
//!   store at start, not per connection.
//! - Crypto provider: aws-lc-rs, the one already compiled in for reqwest and lettre.
//! - ALPN `postgresql` is offered (what libpq 17 sends; PostgreSQL 17 requires it for
//!   `sslnegotiation=direct`, older servers ignore it).
//! - Channel binding: none (SCRAM without `-PLUS`); `channel_binding=require` in the URL
//!   therefore fails to connect.
//! - The adapter is ours (small, safe) over `tokio-rustls`, which is already in the tree:
//!   `tokio-postgres-rustls` is not, and would add a crate for these lines.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::store::StoreError;

/// The ALPN protocol name of PostgreSQL's TLS (PostgreSQL 17 documentation, "SSL Session
/// Encryption": `postgresql`).
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Whether connections made with `mode` use TLS: `require` (and any stricter mode a later
/// driver may parse) does, and fails without it; `disable` and `prefer` do not (see the
/// module doc for why `prefer` is not "try TLS").
pub fn tls_required(mode: SslMode) -> bool {
    !matches!(mode, SslMode::Disable | SslMode::Prefer)
}

/// What is wrong with a `[store] ca_file`.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read it: {0}")]
    Read(#[from] io::Error),
    #[error("it is not valid PEM: {0}")]
    Pem(rustls::pki_types::pem::Error),
    #[error(
        "it holds no certificate (expected one or more \"-----BEGIN CERTIFICATE-----\" blocks)"
    )]
    Empty,
    #[error("certificate {number} in it is not a usable CA certificate: {error}")]
    Unusable { number: usize, error: rustls::Error },
}

/// The CA certificates of a PEM text (blocks of other kinds, such as keys, are skipped):
/// at least one, each usable as a trust anchor.
pub fn parse_ca_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CaFileError::Pem)?;
    if certs.is_empty() {
        return Err(CaFileError::Empty);
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|error| CaFileError::Unusable {
                number: i + 1,
                error,
            })?;
    }
    Ok(certs)
}

/// The CA certificates of the PEM file at `path` (see [`parse_ca_pem`]).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    parse_ca_pem(&std::fs::read(path)?)
}

/// The rustls configuration of every TLS connection of one store: the system's roots plus
/// those of `ca_file`, whose problems are [`StoreError::Invalid`] naming the key and path.
///
/// Guess (README, "What rests on a guess"): a PostgreSQL server reached over TLS presents
/// a certificate naming the URL's host (DNS or IP SAN) that chains to one of these roots,
/// as libpq's `sslmode=verify-full` requires (PostgreSQL documentation, libpq "SSL
/// Support", "Client Verification of Server Certificates"); no reference here records what
/// each managed service presents.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, StoreError> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::warn!(%error, "cannot read some of the system's CA certificates");
    }
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        let certs = read_ca_file(path)
            .map_err(|e| StoreError::Invalid(format!("[store] ca_file {}: {e}", path.display())))?;
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        tracing::warn!(
            "no trusted CA certificate (none in the system store, no [store] ca_file): \
             every TLS connection to PostgreSQL will be refused"
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Internal(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// tokio-postgres's TLS for one store: `None` where [`tls_required`] is false (the
/// connection's `sslmode` is then `disable`, so the driver never asks for a handshake).
#[derive(Clone)]
pub struct MakeRustls {
    config: Option<Arc<ClientConfig>>,
}

impl MakeRustls {
    /// Verified TLS with `config` (see [`client_config`]).
    pub fn new(config: Arc<ClientConfig>) -> MakeRustls {
        MakeRustls {
            config: Some(config),
        }
    }

    /// No TLS.
    pub fn off() -> MakeRustls {
        MakeRustls { config: None }
    }
}

/// Why a TLS connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the server (its certificate, name, protocol…).
    #[error("{0}")]
    Rejected(rustls::Error),
    /// The connection failed during the handshake.
    #[error("during the handshake: {0}")]
    Io(io::Error),
    #[error("`{0}` is not a host name or IP address a certificate could name")]
    BadName(String),
    #[error("TLS is not set up for this connection")]
    Off,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsError;

    /// Called for every connection, TLS or not, with `""` for a Unix socket: a name that
    /// is not one fails only if a handshake is asked for.
    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, TlsError> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_owned())
                .map_err(|_| TlsError::BadName(domain.to_owned())),
        })
    }
}

/// One handshake, towards the name it was made for.
pub struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    name: Result<ServerName<'static>, TlsError>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or(TlsError::Off)?;
            let name = self.name?;
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map(RustlsStream)
                .map_err(handshake_error)
        })
    }
}

/// rustls's own error where the I/O error carries one (tokio-rustls wraps it).
fn handshake_error(e: io::Error) -> TlsError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rejected) => TlsError::Rejected(rejected.clone()),
        None => TlsError::Io(e),
    }
}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// A failed connection in words: `TLS: <what rustls refused>` when the handshake failed
/// on our side, else the driver's message with its causes ("error performing TLS
/// handshake: server does not support TLS" when the server has no TLS; the driver's own
/// `Display` leaves the cause out). Never the URL.
pub fn describe_connect_error(e: &tokio_postgres::Error) -> String {
    let mut parts = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(tls) = error.downcast_ref::<TlsError>() {
            return format!("TLS: {tls}");
        }
        parts.push(error.to_string());
        source = error.source();
    }
    parts.join(": ")
}
