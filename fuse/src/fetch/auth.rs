//! Authentication of range requests: what a registry blob needs on top of plain HTTP.

use lazypull_converter::registry::Client;
use lazypull_converter::Result;

/// Supplies the `Authorization` header of a blob's requests and answers a `401`.
///
/// Both methods may block on the network (a token renewal), so the fetcher calls them on
/// tokio's blocking pool. The header goes only to the blob's own URL, never to a redirect target
/// elsewhere (presigned storage URLs carry their own authorisation).
pub trait RequestAuth: Send + Sync {
    /// The header value to send now, if any.
    fn authorization(&self) -> Result<Option<String>>;
    /// The server answered `401` with this `WWW-Authenticate`: get new credentials.
    fn reauthenticate(&self, www_authenticate: Option<&str>) -> Result<()>;
}

/// A registry client authenticates its repository's blobs: basic credentials or a bearer
/// token for its scopes, renewed on expiry and on a `401`.
impl RequestAuth for Client {
    fn authorization(&self) -> Result<Option<String>> {
        Client::authorization(self)
    }

    fn reauthenticate(&self, www_authenticate: Option<&str>) -> Result<()> {
        self.authenticate("read blob", www_authenticate)
    }
}
