//! Presets: the wire details of each platform's token endpoint as its
//! documentation describes them. A preset only fills in defaults; every key
//! set explicitly in the config wins.

use super::raw::GrantKind;
use crate::grant::{ClientAuth, Encoding};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Plentymarkets,
    JtlCloud,
    JtlScx,
    Oro,
    Shopware,
    Floriday,
    GoogleServiceAccount,
    EntraId,
    Okta,
    Auth0,
    Keycloak,
}

/// What a preset fills in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PresetDefaults {
    pub token_url: Option<&'static str>,
    pub grant: Option<GrantKind>,
    pub auth: Option<ClientAuth>,
    pub encoding: Option<Encoding>,
    pub client_id: Option<&'static str>,
    pub scope_param: Option<&'static str>,
    pub refresh_token_param: Option<&'static str>,
    pub headers: &'static [(&'static str, &'static str)],
    /// (response field, JSON Pointer)
    pub response: &'static [(&'static str, &'static str)],
    pub scope_required: bool,
    /// Where the endpoint comes from, when the preset cannot know it.
    pub endpoint_hint: &'static str,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Plentymarkets => "plentymarkets",
            Preset::JtlCloud => "jtl-cloud",
            Preset::JtlScx => "jtl-scx",
            Preset::Oro => "oro",
            Preset::Shopware => "shopware",
            Preset::Floriday => "floriday",
            Preset::GoogleServiceAccount => "google-service-account",
            Preset::EntraId => "entra-id",
            Preset::Okta => "okta",
            Preset::Auth0 => "auth0",
            Preset::Keycloak => "keycloak",
        }
    }

    /// The grant a client of this preset uses unless it says otherwise.
    pub fn default_grant(self) -> GrantKind {
        match self {
            Preset::JtlScx => GrantKind::RefreshToken,
            Preset::GoogleServiceAccount => GrantKind::JwtBearer,
            _ => GrantKind::ClientCredentials,
        }
    }

    /// The defaults for a client of this preset using `grant`.
    pub fn defaults(self, grant: GrantKind) -> PresetDefaults {
        match self {
            Preset::Plentymarkets => PresetDefaults {
                auth: Some(ClientAuth::Body),
                encoding: Some(Encoding::Form),
                endpoint_hint: "the Token URL shown for the app client in plentymarkets",
                ..PresetDefaults::default()
            },
            Preset::JtlCloud => PresetDefaults {
                token_url: Some("https://auth.jtl-cloud.com/oauth2/token"),
                auth: Some(ClientAuth::Basic),
                encoding: Some(Encoding::Form),
                ..PresetDefaults::default()
            },
            Preset::JtlScx => PresetDefaults {
                token_url: Some("https://scx.api.jtl-software.com/v1/auth"),
                grant: Some(GrantKind::RefreshToken),
                auth: Some(ClientAuth::None),
                encoding: Some(Encoding::Multipart),
                refresh_token_param: Some("refreshToken"),
                response: &[
                    ("access_token", "/authToken"),
                    ("expires_at", "/tokenExpireAt"),
                    ("expires_in", "/expiresIn"),
                ],
                ..PresetDefaults::default()
            },
            Preset::Oro => PresetDefaults {
                auth: Some(ClientAuth::Body),
                encoding: Some(Encoding::Json),
                endpoint_hint: "<your Oro application URL>/oauth2-token",
                ..PresetDefaults::default()
            },
            Preset::Shopware => match grant {
                // the Administration API's own public client
                GrantKind::Password | GrantKind::RefreshToken => PresetDefaults {
                    auth: Some(ClientAuth::None),
                    encoding: Some(Encoding::Json),
                    client_id: Some("administration"),
                    scope_param: Some("scopes"),
                    endpoint_hint: "<your shop URL>/api/oauth/token",
                    ..PresetDefaults::default()
                },
                // an integration: access key ID and secret access key
                _ => PresetDefaults {
                    auth: Some(ClientAuth::Body),
                    encoding: Some(Encoding::Json),
                    endpoint_hint: "<your shop URL>/api/oauth/token",
                    ..PresetDefaults::default()
                },
            },
            Preset::Floriday => PresetDefaults {
                auth: Some(ClientAuth::Body),
                encoding: Some(Encoding::Form),
                headers: &[("Accept", "application/json")],
                scope_required: true,
                endpoint_hint: "issuer = the Floriday authorization server (its token endpoint is discovered)",
                ..PresetDefaults::default()
            },
            // a service account's JSON key: the JWT bearer grant, no
            // client authentication, the scopes in the assertion
            // the v2.0 endpoint: a client secret, or a certificate
            // (auth = "private_key_jwt" with certificate_file); the
            // resource's `.default` scope
            Preset::EntraId => PresetDefaults {
                auth: Some(ClientAuth::Body),
                encoding: Some(Encoding::Form),
                scope_required: true,
                endpoint_hint: "https://login.microsoftonline.com/<tenant id>/oauth2/v2.0/token",
                ..PresetDefaults::default()
            },
            Preset::Okta => PresetDefaults {
                auth: Some(ClientAuth::Basic),
                encoding: Some(Encoding::Form),
                scope_required: true,
                endpoint_hint: "issuer = https://<your Okta domain>/oauth2/default (its token endpoint is discovered)",
                ..PresetDefaults::default()
            },
            Preset::Auth0 => PresetDefaults {
                auth: Some(ClientAuth::Body),
                encoding: Some(Encoding::Form),
                endpoint_hint: "https://<your tenant>.<region>.auth0.com/oauth/token",
                ..PresetDefaults::default()
            },
            Preset::Keycloak => PresetDefaults {
                auth: Some(ClientAuth::Basic),
                encoding: Some(Encoding::Form),
                endpoint_hint: "issuer = https://<host>/realms/<realm> (its token endpoint is discovered)",
                ..PresetDefaults::default()
            },
            Preset::GoogleServiceAccount => PresetDefaults {
                token_url: Some("https://oauth2.googleapis.com/token"),
                grant: Some(GrantKind::JwtBearer),
                auth: Some(ClientAuth::None),
                encoding: Some(Encoding::Form),
                scope_required: true,
                ..PresetDefaults::default()
            },
        }
    }

    /// Why a key this preset needs matters, for a one-line explanation.
    pub fn explain(self, grant: GrantKind, key: &str) -> Option<String> {
        let p = self.name();
        Some(match (self, grant, key) {
            (Preset::Shopware, GrantKind::Password, "username" | "password") => format!(
                "preset \"{p}\" with grant_type = \"password\" logs in as an Administration user: set username and one of password_file, password_env, password"
            ),
            (Preset::JtlScx, _, "refresh_token_file") => format!(
                "preset \"{p}\" authenticates with the seller's long-lived SCX refresh token: set refresh_token_file"
            ),
            (Preset::EntraId, _, "scope") => format!(
                "preset \"{p}\" needs scope: the resource's .default scope, e.g. \"https://graph.microsoft.com/.default\" or \"api://<application id>/.default\""
            ),
            (Preset::Okta, _, "scope") => format!(
                "preset \"{p}\" needs scope: a custom scope of the authorization server (client credentials have no default scope in Okta)"
            ),
            (Preset::GoogleServiceAccount, _, "scope") => format!(
                "preset \"{p}\" needs scope: the OAuth scopes, space-separated, e.g. \"https://www.googleapis.com/auth/cloud-platform\""
            ),
            (Preset::Floriday, _, "scope") => {
                format!(
                    "preset \"{p}\" needs scope: the API scopes, space-separated, e.g. \"role:app catalog:read\""
                )
            }
            (_, _, "token_url") => {
                let hint = self.defaults(grant).endpoint_hint;
                format!("preset \"{p}\" needs token_url: {hint}")
            }
            (_, _, "client_id" | "client_secret") => format!(
                "preset \"{p}\" with grant_type = \"{}\" needs client_id and one of client_secret_file, client_secret_env, client_secret",
                grant_name(grant)
            ),
            _ => return None,
        })
    }
}

pub fn grant_name(grant: GrantKind) -> &'static str {
    match grant {
        GrantKind::ClientCredentials => "client_credentials",
        GrantKind::Password => "password",
        GrantKind::RefreshToken => "refresh_token",
        GrantKind::Static => "static",
        GrantKind::JwtBearer => "jwt_bearer",
        GrantKind::TokenExchange => "token_exchange",
    }
}
