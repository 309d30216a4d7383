//! A minimal HTTP/1 client for the real gateway: hyper-util's client over a
//! plain TCP connector, with no cookie jar (tests pass cookies by hand, so
//! each test says exactly what it sends).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One answered request.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client for one base address such as `http://127.0.0.1:8080`.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    pub base: String,
    /// `host:port`, for `Host` and `Origin`.
    pub authority: String,
}

impl Http {
    pub fn new(base: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.trim_end_matches('/').to_owned(),
            authority: base
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
        }
    }

    /// The origin a same-origin page of this gateway has.
    pub fn origin(&self) -> String {
        format!("http://{}", self.authority)
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        self.send(Method::GET, path, headers, None).await
    }

    pub async fn post_form(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        fields: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut h = headers.to_vec();
        h.push(("content-type", "application/x-www-form-urlencoded"));
        self.send(Method::POST, path, &h, Some(body)).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<Reply, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// Logs in with `token`; returns the `Cookie` header value.
    pub async fn login(&self, token: &str) -> Result<String, String> {
        let origin = self.origin();
        let r = self
            .post_form(
                "/login",
                &[
                    ("origin", origin.as_str()),
                    ("sec-fetch-site", "same-origin"),
                ],
                &[("token", token)],
            )
            .await?;
        if r.status != StatusCode::SEE_OTHER {
            return Err(format!("login answered {}: {}", r.status, r.body));
        }
        let set = r.header("set-cookie").ok_or("no session cookie")?;
        Ok(set.split(';').next().unwrap_or_default().to_owned())
    }
}

/// Sends `request` (raw HTTP/1.1 bytes) to `127.0.0.1:port` from a child
/// process running as `uid`/`gid` (bash's `/dev/tcp`, so the connection is
/// that uid's socket as the kernel sees it) and returns everything the
/// server answered. The caller must be root to pick another uid.
pub fn raw_request_as(uid: u32, gid: u32, port: u16, request: &str) -> String {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            "exec 3<>\"/dev/tcp/127.0.0.1/$PORT\" && printf '%s' \"$REQUEST\" >&3 && cat <&3",
        ])
        .env("PORT", port.to_string())
        .env("REQUEST", request)
        .current_dir("/")
        .gid(gid)
        .uid(uid)
        .output()
        .expect("run bash as the client");
    assert!(
        out.status.success(),
        "the client as uid {uid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
