//! The URL of every ACME resource, built from the configured base URL only (never from a Host
//! header a client controls), and the reverse mapping for `kid` account URLs.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls {
    origin: String,
    base: String,
}

impl Urls {
    pub fn new(base_url: &str) -> Self {
        let origin = base_url.trim_end_matches('/').to_string();
        Self {
            base: format!("{origin}/acme"),
            origin,
        }
    }

    /// The absolute URL of a request path, to compare with the JWS `url` (RFC 8555 §6.4).
    pub fn request_url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    pub fn directory(&self) -> String {
        format!("{}/directory", self.base)
    }
    pub fn new_nonce(&self) -> String {
        format!("{}/new-nonce", self.base)
    }
    pub fn new_account(&self) -> String {
        format!("{}/new-account", self.base)
    }
    pub fn new_order(&self) -> String {
        format!("{}/new-order", self.base)
    }
    pub fn revoke_cert(&self) -> String {
        format!("{}/revoke-cert", self.base)
    }
    pub fn key_change(&self) -> String {
        format!("{}/key-change", self.base)
    }
    pub fn account(&self, id: i64) -> String {
        format!("{}/account/{id}", self.base)
    }
    pub fn account_orders(&self, id: i64) -> String {
        format!("{}/account/{id}/orders", self.base)
    }
    pub fn order(&self, id: i64) -> String {
        format!("{}/order/{id}", self.base)
    }
    pub fn finalize(&self, id: i64) -> String {
        format!("{}/order/{id}/finalize", self.base)
    }
    pub fn authz(&self, id: i64) -> String {
        format!("{}/authz/{id}", self.base)
    }
    pub fn challenge(&self, id: i64) -> String {
        format!("{}/challenge/{id}", self.base)
    }
    pub fn cert(&self, serial: &str) -> String {
        format!("{}/cert/{serial}", self.base)
    }
    pub fn renewal_info(&self) -> String {
        format!("{}/renewal-info", self.base)
    }
    pub fn issuer(&self) -> String {
        format!("{}/issuer", self.base)
    }

    /// The account id a `kid` names, if it is one of our account URLs exactly.
    pub fn account_id(&self, kid: &str) -> Option<i64> {
        let rest = kid.strip_prefix(&self.base)?.strip_prefix("/account/")?;
        // Digits only: "+1" or "01" would parse but are not URLs we hand out.
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || rest.starts_with('0') {
            return None;
        }
        rest.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_urls_map_back_to_account_ids() {
        let u = Urls::new("https://ca.example:8443/");
        assert_eq!(u.account(7), "https://ca.example:8443/acme/account/7");
        assert_eq!(u.account_id(&u.account(7)), Some(7));
        for bad in [
            "https://ca.example:8443/acme/account/",
            "https://ca.example:8443/acme/account/07",
            "https://ca.example:8443/acme/account/+7",
            "https://ca.example:8443/acme/account/7/orders",
            "https://other.example/acme/account/7",
            "7",
        ] {
            assert_eq!(u.account_id(bad), None, "{bad}");
        }
        assert_eq!(u.request_url("/acme/new-order"), u.new_order());
    }
}
