//! A thin WebDAV client: PUT, GET, DELETE, PROPFIND `Depth: 1` and MKCOL, as Apache
//! mod_dav and nginx accept them (ready-made clients fail against both).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use reqwest::{Method, StatusCode};

use super::{Created, Listing, Store, StoreConfig, StoreError, StoreResult, check_key};

/// Characters kept as they are in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

const PROPFIND_BODY: &str = r#"<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/><D:getcontentlength/></D:prop></D:propfind>"#;

/// A WebDAV collection used as a store.
#[derive(Debug)]
pub struct DavStore {
    client: reqwest::Client,
    /// `http(s)://host:port/path/`, always ending in `/`.
    base: url::Url,
    user: Option<String>,
    password: Option<String>,
    url: String,
}

impl DavStore {
    /// Builds a client for `dav+http(s)://host:port/path/`.
    pub fn new(config: &StoreConfig) -> anyhow::Result<Self> {
        let url = config.url.clone();
        let rest = url
            .strip_prefix("dav+")
            .ok_or_else(|| anyhow::anyhow!("{url} is not a dav+http(s):// URL"))?;
        let mut base = url::Url::parse(rest)
            .map_err(|e| anyhow::anyhow!("store URL {url} does not parse: {e}"))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        if let Some(pem) = &config.ca_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("the CA of store {url} is not valid PEM: {e}"))?;
            builder = builder.tls_certs_only([cert]);
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up WebDAV client for {url}: {e}"))?;
        Ok(DavStore {
            client,
            base,
            user: config.access_key.clone(),
            password: config.secret_key.clone(),
            url,
        })
    }

    fn href(&self, key: &str) -> StoreResult<url::Url> {
        check_key(key)?;
        let encoded: Vec<String> = key
            .split('/')
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        self.base
            .join(&encoded.join("/"))
            .map_err(|_| StoreError::BadKey {
                key: key.to_string(),
                detail: "it does not form a URL",
            })
    }

    fn request(&self, method: Method, url: url::Url) -> reqwest::RequestBuilder {
        let req = self.client.request(method, url);
        match &self.user {
            Some(u) => req.basic_auth(u, self.password.as_deref()),
            None => req,
        }
    }

    fn transport(&self, op: &'static str, key: &str, e: reqwest::Error) -> StoreError {
        StoreError::Unavailable {
            store: self.url.clone(),
            op,
            key: key.to_string(),
            detail: e.to_string(),
        }
    }

    fn status(&self, op: &'static str, key: &str, status: StatusCode) -> StoreError {
        let key = key.to_string();
        let store = self.url.clone();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                StoreError::Denied { store, op, key }
            }
            s if s.is_server_error() => StoreError::Unavailable {
                store,
                op,
                key,
                detail: format!("HTTP {s}"),
            },
            s => StoreError::Failed {
                store,
                op,
                key,
                detail: format!("HTTP {s}"),
            },
        }
    }

    /// Creates every collection on the way to `key` (MKCOL with a trailing slash).
    async fn make_parents(&self, key: &str) -> StoreResult<()> {
        let mut at = String::new();
        let parts: Vec<&str> = key.split('/').collect();
        for seg in &parts[..parts.len().saturating_sub(1)] {
            at.push_str(seg);
            at.push('/');
            let resp = self
                .request(
                    Method::from_bytes(b"MKCOL").expect("valid method"),
                    self.href(&at)?,
                )
                .send()
                .await
                .map_err(|e| self.transport("mkcol", &at, e))?;
            // 405 means it exists already; under concurrent MKCOLs Apache may answer 403
            // or 409 while another request creates it. The PUT that follows decides.
            if !resp.status().is_success() {
                tracing::debug!(collection = at, status = %resp.status(), "MKCOL not applied");
            }
        }
        Ok(())
    }

    async fn put_with(
        &self,
        op: &'static str,
        key: &str,
        body: Bytes,
        if_none_match: bool,
    ) -> StoreResult<StatusCode> {
        let url = self.href(key)?;
        for attempt in 0..2 {
            let mut req = self.request(Method::PUT, url.clone()).body(body.clone());
            if if_none_match {
                req = req.header("If-None-Match", "*");
            }
            let status = req
                .send()
                .await
                .map_err(|e| self.transport(op, key, e))?
                .status();
            // 409 (Apache) or 404 (rclone): a parent collection is missing.
            if attempt == 0 && (status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND) {
                self.make_parents(key).await?;
                continue;
            }
            return Ok(status);
        }
        unreachable!("the loop returns on its second pass")
    }
}

#[async_trait]
impl Store for DavStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        match self.put_with("put", key, body, false).await? {
            s if s.is_success() => Ok(()),
            s => Err(self.status("put", key, s)),
        }
    }

    async fn create(&self, key: &str, body: Bytes) -> StoreResult<Created> {
        match self.put_with("create", key, body, true).await? {
            s if s.is_success() => Ok(Created::Created),
            StatusCode::PRECONDITION_FAILED => Ok(Created::Exists),
            s => Err(self.status("create", key, s)),
        }
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let resp = self
            .request(Method::GET, self.href(key)?)
            .send()
            .await
            .map_err(|e| self.transport("get", key, e))?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => resp
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.transport("get", key, e)),
            s => Err(self.status("get", key, s)),
        }
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Option<Bytes>> {
        if len == 0 {
            return Ok(Some(Bytes::new()));
        }
        let last = offset.saturating_add(len) - 1;
        let resp = self
            .request(Method::GET, self.href(key)?)
            .header("Range", format!("bytes={offset}-{last}"))
            .send()
            .await
            .map_err(|e| self.transport("get", key, e))?;
        let whole = match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            StatusCode::RANGE_NOT_SATISFIABLE => return Ok(Some(Bytes::new())),
            StatusCode::PARTIAL_CONTENT => false,
            s if s.is_success() => true,
            s => return Err(self.status("get", key, s)),
        };
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport("get", key, e))?;
        // A server that ignores Range sends the whole object.
        Ok(Some(if whole {
            let start = (offset as usize).min(body.len());
            body.slice(start..(start + len as usize).min(body.len()))
        } else {
            body
        }))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let resp = self
            .request(Method::DELETE, self.href(key)?)
            .send()
            .await
            .map_err(|e| self.transport("delete", key, e))?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(()),
            s if s.is_success() => Ok(()),
            s => Err(self.status("delete", key, s)),
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Listing> {
        let url = self.href(prefix)?;
        let resp = self
            .request(
                Method::from_bytes(b"PROPFIND").expect("valid method"),
                url.clone(),
            )
            .header("Depth", "1")
            .header("Content-Type", "application/xml")
            .body(PROPFIND_BODY)
            .send()
            .await
            .map_err(|e| self.transport("list", prefix, e))?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(Listing::default()),
            s if s.as_u16() == 207 => {}
            s => return Err(self.status("list", prefix, s)),
        }
        let text = resp
            .text()
            .await
            .map_err(|e| self.transport("list", prefix, e))?;
        let entries = parse_multistatus(&text).map_err(|detail| StoreError::Failed {
            store: self.url.clone(),
            op: "list",
            key: prefix.to_string(),
            detail,
        })?;
        let own = percent_decode_str(url.path())
            .decode_utf8_lossy()
            .to_string();
        let (mut objects, mut folders) = (Vec::new(), Vec::new());
        for (href, is_dir, size) in entries {
            // A href is an absolute URL or an absolute path; only its path matters.
            let path = match url::Url::parse(&href) {
                Ok(u) => u.path().to_string(),
                Err(_) => href,
            };
            let path = percent_decode_str(&path).decode_utf8_lossy().to_string();
            let Some(name) = path.strip_prefix(&own) else {
                continue;
            };
            let name = name.trim_end_matches('/');
            if name.is_empty() || name.contains('/') {
                continue;
            }
            if is_dir {
                folders.push(name.to_string());
            } else {
                objects.push((name.to_string(), size));
            }
        }
        Ok(Listing::new(objects, folders))
    }
}

/// Reads `(href, is collection, content length)` out of a PROPFIND multistatus body.
pub fn parse_multistatus(xml: &str) -> Result<Vec<(String, bool, u64)>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    let mut in_href = false;
    let mut in_length = false;
    let mut length = String::new();
    let mut href = String::new();
    let mut is_dir = false;
    let mut in_response = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => match e.local_name().as_ref() {
                b"response" => {
                    in_response = true;
                    href.clear();
                    length.clear();
                    is_dir = false;
                }
                b"href" if in_response => in_href = true,
                b"getcontentlength" if in_response => in_length = true,
                b"collection" if in_response => is_dir = true,
                _ => {}
            },
            Ok(Event::Empty(e)) if in_response && e.local_name().as_ref() == b"collection" => {
                is_dir = true;
            }
            Ok(Event::Text(t)) if in_href => {
                href.push_str(&t.decode().map_err(|e| e.to_string())?);
            }
            Ok(Event::Text(t)) if in_length => {
                length.push_str(&t.decode().map_err(|e| e.to_string())?);
            }
            Ok(Event::GeneralRef(r)) if in_href => {
                // Entities such as &amp; inside an href.
                let name = r.decode().map_err(|e| e.to_string())?;
                href.push_str(match name.as_ref() {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                });
            }
            Ok(Event::End(e)) => match e.local_name().as_ref() {
                b"href" => in_href = false,
                b"getcontentlength" => in_length = false,
                b"response" => {
                    in_response = false;
                    if !href.is_empty() {
                        let size = length.trim().parse().unwrap_or(0);
                        out.push((href.trim().to_string(), is_dir, size));
                    }
                }
                _ => {}
            },
            Ok(Event::Eof) => break,
            Err(e) => return Err(format!("PROPFIND answer is not valid XML: {e}")),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multistatus_from_apache_parses() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:" xmlns:ns0="DAV:">
<D:response xmlns:lp1="DAV:"><D:href>/dav/mailboxes/</D:href><D:propstat><D:prop><lp1:resourcetype><D:collection/></lp1:resourcetype></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>
<D:response xmlns:lp1="DAV:"><D:href>/dav/mailboxes/a%20b/</D:href><D:propstat><D:prop><lp1:resourcetype><D:collection/></lp1:resourcetype></D:prop></D:propstat></D:response>
<D:response xmlns:lp1="DAV:"><D:href>https://h/dav/mailboxes/x.json</D:href><D:propstat><D:prop><lp1:resourcetype/><lp1:getcontentlength>1234</lp1:getcontentlength></D:prop></D:propstat></D:response>
</D:multistatus>"#;
        let got = parse_multistatus(xml).expect("parses");
        assert_eq!(
            got,
            vec![
                ("/dav/mailboxes/".to_string(), true, 0),
                ("/dav/mailboxes/a%20b/".to_string(), true, 0),
                ("https://h/dav/mailboxes/x.json".to_string(), false, 1234),
            ]
        );
    }

    #[test]
    fn broken_multistatus_is_an_error() {
        assert!(parse_multistatus("<D:multistatus><D:response>").is_ok());
        assert!(parse_multistatus("<a></b>").is_err());
    }

    proptest::proptest! {
        #[test]
        fn multistatus_parser_never_panics(s in ".{0,400}") {
            let _ = parse_multistatus(&s);
        }
    }
}
