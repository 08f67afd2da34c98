//! The 401 challenge, the protected resource metadata and the Origin check.

use mcp::auth::{
    PROTECTED_RESOURCE_METADATA_PATH, check_origin, protected_resource_metadata, www_authenticate,
};
use serde_json::json;

use crate::*;

#[test]
fn the_challenge_points_at_the_metadata() {
    let url = format!("https://gw.example{PROTECTED_RESOURCE_METADATA_PATH}");
    assert_eq!(
        www_authenticate(&url, None),
        "Bearer resource_metadata=\"https://gw.example/.well-known/oauth-protected-resource\""
    );
    assert_eq!(
        www_authenticate(&url, Some(("invalid_token", "The key was \"revoked\"."))),
        "Bearer resource_metadata=\"https://gw.example/.well-known/oauth-protected-resource\", \
         error=\"invalid_token\", error_description=\"The key was \\\"revoked\\\".\""
    );
    // Control characters cannot reach the header.
    assert!(!www_authenticate("https://x/\r\nSet-Cookie: a", None).contains('\n'));
}

#[test]
fn the_metadata_document() {
    assert_eq!(
        protected_resource_metadata("https://gw.example/mcp", &[], Some("Tollgate"), None),
        json!({
            "resource": "https://gw.example/mcp",
            "bearer_methods_supported": ["header"],
            "resource_name": "Tollgate"
        })
    );
    let servers = vec!["https://auth.example".to_owned()];
    let document = protected_resource_metadata(
        "https://gw.example/mcp",
        &servers,
        None,
        Some("https://gw.example/_tollgate/portal/"),
    );
    assert_eq!(
        document["authorization_servers"],
        json!(["https://auth.example"])
    );
    assert_eq!(
        document["resource_documentation"],
        "https://gw.example/_tollgate/portal/"
    );
}

#[test]
fn origins() {
    let allowed = vec!["https://app.example".to_owned()];
    assert!(check_origin(None, Some("gw.example"), &[]).is_ok());
    assert!(check_origin(Some("https://gw.example"), Some("gw.example"), &[]).is_ok());
    assert!(check_origin(Some("https://gw.example"), Some("gw.example:443"), &[]).is_ok());
    assert!(check_origin(Some("http://localhost:8080"), Some("localhost:8080"), &[]).is_ok());
    assert!(check_origin(Some("https://app.example"), Some("gw.example"), &allowed).is_ok());
    for (origin, host) in [
        ("https://evil.example", Some("gw.example")),
        ("http://gw.example:8080", Some("gw.example")),
        ("https://gw.example", None),
        ("null", Some("gw.example")),
    ] {
        let reply = check_origin(Some(origin), host, &allowed).unwrap_err();
        let body = assert_error(&reply, 403, -32600);
        assert!(!body.as_object().unwrap().contains_key("id"));
    }
}
