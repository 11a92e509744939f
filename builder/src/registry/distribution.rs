//! The distribution API's operations over [`HttpRegistry`]: manifests, blobs, uploads,
//! listings, and Docker Hub's `/v1/search`.

use std::io::Read;

use snapshotter::Digest;

use super::http::{
    CHUNK, HttpRegistry, Payload, content_length, location, percent_encode, pull_scope, push_scope,
    read_document, with_query,
};
use super::{BlobStream, FetchedManifest, MANIFEST_TYPES, Registry, RegistryError, Result};

/// One page of a listing plus the `Link` to the next.
#[derive(serde::Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct Catalog {
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

/// One hit of Docker Hub's `/v1/search`.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
pub struct SearchHit {
    /// Repository name.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Stars.
    #[serde(default)]
    pub star_count: u64,
    /// Whether it is an official image.
    #[serde(default)]
    pub is_official: bool,
}

#[derive(serde::Deserialize)]
struct SearchPage {
    #[serde(default)]
    results: Vec<SearchHit>,
}

impl HttpRegistry {
    /// Docker Hub's `/v1/search`, where the registry serves it (`None` when it does not).
    pub fn search_v1(&self, term: &str, limit: usize) -> Result<Option<Vec<SearchHit>>> {
        let path = format!("/v1/search?q={}&n={limit}", percent_encode(term));
        let mut resp = self.call("GET", &path, "", &[], Payload::Empty)?;
        if resp.status() != 200 {
            return Ok(None);
        }
        let body = read_document(&mut resp).map_err(|e| self.unreachable(e))?;
        Ok(serde_json::from_slice::<SearchPage>(&body)
            .ok()
            .map(|p| p.results))
    }

    fn list_pages<T: serde::de::DeserializeOwned>(
        &self,
        first: String,
        scope: &str,
        what: &str,
        limit: usize,
        mut items: impl FnMut(T) -> Vec<String>,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let mut resp = self.call("GET", &path, scope, &[], Payload::Empty)?;
            if resp.status() != 200 {
                return Err(self.status_error("list", what, resp));
            }
            next = resp
                .headers()
                .get("link")
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.split_once('<'))
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(u, _)| u.to_string());
            let body = read_document(&mut resp).map_err(|e| self.unreachable(e))?;
            let page: T = serde_json::from_slice(&body).map_err(|_| {
                RegistryError::Malformed(format!("{}: {what}: listing is not JSON", self.host))
            })?;
            out.extend(items(page));
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }
}

impl Registry for HttpRegistry {
    fn host(&self) -> &str {
        &self.host
    }

    fn ping(&self) -> Result<()> {
        let resp = self.call("GET", "/v2/", "", &[], Payload::Empty)?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            _ => Err(self.status_error("ping", &format!("{}/v2/", self.host), resp)),
        }
    }

    fn fetch_manifest(&self, repo: &str, reference: &str) -> Result<FetchedManifest> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let accept = MANIFEST_TYPES.join(", ");
        let sep = if reference.starts_with("sha256:") {
            "@"
        } else {
            ":"
        };
        let what = format!("{}/{repo}{sep}{reference}", self.host);
        let mut resp = self.call(
            "GET",
            &path,
            &pull_scope(repo),
            &[("accept", accept)],
            Payload::Empty,
        )?;
        if resp.status() != 200 {
            return Err(self.status_error("get manifest", &format!("manifest {what}"), resp));
        }
        let header_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_string());
        let bytes = read_document(&mut resp).map_err(|e| self.unreachable(e))?;
        let digest = Digest::of(&bytes);
        let own_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            });
        let media_type = own_type
            .or(header_type)
            .unwrap_or_else(|| super::OCI_MANIFEST.to_string());
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self.call("HEAD", &path, &pull_scope(repo), &[], Payload::Empty)?;
        match resp.status().as_u16() {
            200 => Ok(Some(content_length(&resp).unwrap_or(0))),
            404 => Ok(None),
            _ => Err(self.status_error("check blob", &format!("blob {digest}"), resp)),
        }
    }

    fn fetch_blob(&self, repo: &str, digest: &Digest, offset: u64) -> Result<(BlobStream, u64)> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let headers = if offset > 0 {
            vec![("range", format!("bytes={offset}-"))]
        } else {
            Vec::new()
        };
        let resp = self.call("GET", &path, &pull_scope(repo), &headers, Payload::Empty)?;
        let start = match resp.status().as_u16() {
            200 => 0,
            206 => resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.trim_start_matches("bytes ")
                        .split('-')
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or(offset),
            _ => {
                return Err(self.status_error(
                    "get blob",
                    &format!("blob {digest} in {}/{repo}", self.host),
                    resp,
                ));
            }
        };
        Ok((Box::new(resp.into_body().into_reader()), start))
    }

    fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool> {
        let path = format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}");
        let scope = format!("{} {}", push_scope(repo), pull_scope(from));
        let resp = self.call("POST", &path, &scope, &[], Payload::Empty)?;
        match resp.status().as_u16() {
            201 => Ok(true),
            202 => {
                // Not mounted: the registry opened an upload session instead; close it.
                if let Some(loc) = location(&resp) {
                    let _ = self.call("DELETE", &loc, &scope, &[], Payload::Empty);
                }
                Ok(false)
            }
            _ => Err(self.status_error("mount blob", &format!("blob {digest}"), resp)),
        }
    }

    fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        data: &mut dyn Read,
        sent: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let scope = push_scope(repo);
        let what = format!("blob {digest} to {}/{repo}", self.host);
        let resp = self.call(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &scope,
            &[],
            Payload::Empty,
        )?;
        if resp.status() != 202 {
            return Err(self.status_error("start upload", &what, resp));
        }
        let mut loc = location(&resp).ok_or_else(|| {
            RegistryError::Malformed(format!("{}: upload started without a Location", self.host))
        })?;
        let octets = || vec![("content-type", "application/octet-stream".to_string())];
        let mut buf = Vec::with_capacity((size as usize).min(CHUNK));
        let mut offset = 0u64;
        loop {
            buf.clear();
            data.take(CHUNK as u64).read_to_end(&mut buf).map_err(|e| {
                RegistryError::Store(snapshotter::StoreError::Stream("read blob", e))
            })?;
            let last = offset + buf.len() as u64 >= size || buf.len() < CHUNK;
            if last && offset == 0 {
                // Monolithic: the whole blob in the closing PUT.
                let url = with_query(&loc, &format!("digest={digest}"));
                let resp = self.call("PUT", &url, &scope, &octets(), Payload::Bytes(&buf))?;
                if resp.status() != 201 {
                    return Err(self.status_error("upload", &what, resp));
                }
                sent(buf.len() as u64);
                return Ok(());
            }
            if !buf.is_empty() {
                let mut headers = octets();
                headers.push((
                    "content-range",
                    format!("{offset}-{}", offset + buf.len() as u64 - 1),
                ));
                let resp = self.call("PATCH", &loc, &scope, &headers, Payload::Bytes(&buf))?;
                if resp.status() != 202 {
                    return Err(self.status_error("upload chunk", &what, resp));
                }
                loc = location(&resp).unwrap_or(loc);
                offset += buf.len() as u64;
                sent(buf.len() as u64);
            }
            if last {
                let url = with_query(&loc, &format!("digest={digest}"));
                let resp = self.call("PUT", &url, &scope, &[], Payload::Empty)?;
                if resp.status() != 201 {
                    return Err(self.status_error("finish upload", &what, resp));
                }
                return Ok(());
            }
        }
    }

    fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self.call(
            "PUT",
            &path,
            &push_scope(repo),
            &[("content-type", media_type.to_string())],
            Payload::Bytes(bytes),
        )?;
        if resp.status() != 201 && resp.status() != 200 {
            return Err(self.status_error(
                "put manifest",
                &format!("{}/{repo}:{reference}", self.host),
                resp,
            ));
        }
        let reported = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(reported.unwrap_or_else(|| Digest::of(bytes)))
    }

    fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let what = format!("repository {}/{repo}", self.host);
        self.list_pages(
            format!("/v2/{repo}/tags/list"),
            &pull_scope(repo),
            &what,
            usize::MAX,
            |p: TagList| p.tags.unwrap_or_default(),
        )
    }

    fn catalog(&self, limit: usize) -> Result<Vec<String>> {
        let what = format!("{}/v2/_catalog", self.host);
        let page = limit.clamp(1, 1000);
        self.list_pages(
            format!("/v2/_catalog?n={page}"),
            "registry:catalog:*",
            &what,
            limit,
            |p: Catalog| p.repositories.unwrap_or_default(),
        )
    }
}
