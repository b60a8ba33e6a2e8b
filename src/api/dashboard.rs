//! The dashboard: one HTML page, its script, style sheet and icon, compiled into the
//! binary and served by it, so it works air-gapped and always matches the API it reads.
//!
//! The page is static and holds no event text: the script fetches the JSON API and puts
//! every name and summary into the DOM as text (`textContent`, `createElement`), never as
//! markup. The page's Content-Security-Policy backs that up: scripts only from this
//! origin (none inline), and in browsers that enforce Trusted Types, any HTML sink
//! (`innerHTML` and the like) throws instead of parsing.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The page's policy. `connect-src 'self'` covers the API and the live stream;
/// `frame-ancestors 'none'` keeps the page out of other sites' frames (clickjacking).
pub const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'; \
    trusted-types 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const PAGE: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("assets/index.html"),
};

/// What `/assets/{name}` serves.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/app.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("assets/icon.svg"),
    },
];

/// Entity tags of the page and the assets, in that order: a browser revalidates each load
/// (`no-cache`) and gets `304` until the binary changes.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    std::iter::once(&PAGE)
        .chain(ASSETS)
        .map(|a| format!("\"{:016x}\"", fnv1a(a.body.as_bytes())))
        .collect()
});

/// FNV-1a: a content hash for entity tags, not for security.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `GET /` and `GET /stages/{pipeline}/{stage}` (the link every alert carries): the
/// dashboard page; its script reads the path and opens that stage.
pub async fn page(headers: HeaderMap) -> Response {
    let mut response = serve(&PAGE, &ETAGS[0], &headers);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /assets/{name}`: the page's script, style sheet and icon.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => serve(&ASSETS[i], &ETAGS[i + 1], &headers),
        None => super::error(StatusCode::NOT_FOUND, "no such asset"),
    }
}

fn serve(asset: &Asset, etag: &str, headers: &HeaderMap) -> Response {
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let common = [
        (header::ETAG, etag.to_string()),
        (header::CACHE_CONTROL, "no-cache".to_string()),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(header::CONTENT_TYPE, asset.content_type)],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the script shows comes from events; none of it may be parsed as
    /// markup. The page's policy makes these throw in Chromium, and this keeps them out
    /// of the source for every other browser too.
    #[test]
    fn the_script_never_parses_data_as_markup() {
        let script = ASSETS[0].body;
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "createContextualFragment",
            "DOMParser",
            "document.write",
            "eval(",
            "new Function",
            "setAttribute('style'",
            "srcdoc",
        ] {
            assert!(!script.contains(sink), "app.js uses {sink}");
        }
    }

    /// No inline script or style, which the policy would block, and nothing fetched
    /// from elsewhere.
    #[test]
    fn the_page_loads_only_its_own_assets() {
        let page = PAGE.body;
        assert!(!page.contains("<script>") && !page.contains("style="));
        assert!(!page.contains("http://") && !page.contains("https://"));
        for asset in ASSETS {
            assert!(
                page.contains(&format!("/assets/{}", asset.name)),
                "{}",
                asset.name
            );
        }
    }

    #[test]
    fn entity_tags_differ_by_content() {
        assert_eq!(ETAGS.len(), ASSETS.len() + 1);
        let mut tags = ETAGS.clone();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), ETAGS.len());
    }
}
