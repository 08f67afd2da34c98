//! Where requests go: a plain `http://host:port/path` URL split into the parts
//! the clients need.

use http::Uri;

use crate::BoxError;

pub struct Target {
    /// `host:port` to connect to.
    pub addr: String,
    /// Value of the `Host` header.
    pub host_header: String,
    /// Request target (path and query).
    pub path: String,
    /// Sent as `Authorization` on every request, when set.
    pub authorization: Option<String>,
    /// When set, requests are POSTs carrying this body as `content_type`.
    pub body: Option<bytes::Bytes>,
    pub content_type: String,
}

impl Target {
    pub fn from_uri(uri: &Uri) -> Result<Self, BoxError> {
        if uri.scheme_str() != Some("http") {
            return Err(format!("{uri}: only http:// URLs are supported").into());
        }
        let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let host_header = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.to_owned());
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        Ok(Self {
            addr: format!("{host}:{port}"),
            host_header,
            path,
            authorization: None,
            body: None,
            content_type: String::new(),
        })
    }
}
