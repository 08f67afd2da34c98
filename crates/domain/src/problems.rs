//! Plain-words explanations of each refusal code: what caused it, how to fix it
//! and how to prevent it. Served as `GET /_tollgate/problems/<code>`.
use crate::code::Code;

/// What a person needs to know about one refusal code.
pub struct Explanation {
    /// Who usually meets it and why, in one or two sentences.
    pub cause: &'static str,
    /// What to do now so the next call succeeds.
    pub fix: &'static str,
    /// How to avoid meeting it again.
    pub prevent: &'static str,
}

pub const fn explain(code: Code) -> Explanation {
    match code {
        Code::MissingCredentials => Explanation {
            cause: "Your request reached a service that needs an API key, but it carried none. \
                    The usual reason is a missing header, or a client or proxy that dropped it.",
            fix: "Send your app's key as `Authorization: Bearer tg_…` or as `X-API-Key: tg_…`. \
                  If your app has no key yet, create one in the portal or with `POST /api/v1/apps/{app}/keys`.",
            prevent: "Set the key once in your HTTP client's default headers rather than per call. \
                      Check that nothing between you and the gateway strips the `Authorization` header.",
        },
        Code::InvalidCredentials => Explanation {
            cause: "The gateway does not know the key you sent, or your token's signature does not verify. \
                    Common reasons are a key copied only in part, a typo, or a JWT whose identity no app claims.",
            fix: "Check that the whole key was sent, starting with `tg_live_` or `tg_test_`. \
                  Keys are shown only once, so create a new one with `POST /api/v1/apps/{app}/keys` if it is lost. \
                  For a JWT, make sure the service takes JWTs and that your app lists the token's issuer and subject under `jwt`.",
            prevent: "Store the key in a secret store as soon as it is created. \
                      Read it from there in every environment instead of copying it by hand.",
        },
        Code::KeyRevoked => Explanation {
            cause: "The key you sent has been revoked by someone in your team. \
                    A revoked key stays listed but is refused within a second.",
            fix: "Create a new key for your app in the portal or with `POST /api/v1/apps/{app}/keys`. \
                  Then deploy it in place of the old one.",
            prevent: "Give each deployment its own named key, so that revoking one does not break the others. \
                      Before revoking a key, make sure nothing still uses it.",
        },
        Code::KeyExpired => Explanation {
            cause: "The key you sent has passed its `expires_at` time. \
                    Expiry is checked on every request.",
            fix: "Create a new key with `POST /api/v1/apps/{app}/keys` and use it instead. \
                  A team member can also move the old key's expiry with `PATCH /api/v1/apps/{app}/keys/{id}`.",
            prevent: "Rotate keys before they expire: create the new key, switch your clients to it, then let the old one run out. \
                      Note each key's `expires_at` when you create it.",
        },
        Code::ConflictingCredentials => Explanation {
            cause: "Your request carried several credentials that belong to different apps. \
                    For example, `Authorization` held one app's key and `X-API-Key` another's.",
            fix: "Send one credential only, either `Authorization: Bearer …` or `X-API-Key: …`. \
                  The problem's detail names the two apps involved.",
            prevent: "Set the credential in one place in your client. \
                      Make sure shared code or proxies do not add a second key of their own.",
        },
        Code::KeyInQuery => Explanation {
            cause: "You sent the key as `?api_key=` in the URL, and this service does not accept keys in the query string. \
                    Query strings end up in logs and browser history, where keys leak.",
            fix: "Move the key to the `Authorization: Bearer …` or `X-API-Key` header and call again.",
            prevent: "Always send keys in a header. \
                      If a key has already appeared in a URL, treat it as leaked: create a new one and revoke the old.",
        },
        Code::TokenMalformed => Explanation {
            cause: "The token you sent is not a readable JWT. \
                    It should be three base64url parts (header, payload and signature) separated by dots.",
            fix: "Send the token exactly as your identity provider issued it, after `Bearer ` with no quotes or extra spaces.",
            prevent: "Pass the token through your code unchanged. \
                      Do not cut, re-encode or wrap it on its way to the gateway.",
        },
        Code::TokenAlgorithm => Explanation {
            cause: "Your token is signed with an algorithm that this service does not allow for its issuer. \
                    The problem's detail lists the allowed ones; `none` is never accepted.",
            fix: "Get a token signed with one of the allowed algorithms (for example `RS256` or `ES256`) from your identity provider.",
            prevent: "Configure your identity provider's client to always sign with an algorithm the service lists.",
        },
        Code::TokenExpired => Explanation {
            cause: "Your token's `exp` time has passed, even allowing for the issuer's leeway.",
            fix: "Get a fresh token from its issuer and send the request again.",
            prevent: "Refresh tokens shortly before their `exp` time instead of waiting for a refusal. \
                      Keep your machine's clock in sync.",
        },
        Code::TokenNotYetValid => Explanation {
            cause: "Your token's `nbf` (not before) time is still in the future. \
                    This usually means the clocks of the issuer and the gateway disagree.",
            fix: "Wait a moment and send the request again. \
                  If it keeps happening, check the issuer's clock.",
            prevent: "Keep the clocks of your machines and your identity provider in sync, for example with NTP.",
        },
        Code::TokenClaims => Explanation {
            cause: "Your token was readable, but one of its claims was refused. \
                    The issuer may be missing or not trusted, the audience may be wrong, or a required claim is missing.",
            fix: "Read the problem's detail, which names the claim. \
                  Then request a token from an issuer the service trusts, with the audience it expects and the claim that names your app.",
            prevent: "Configure your token requests once with the service's issuer, audience and app claim. \
                      Check them against the service's documentation in the portal.",
        },
        Code::InsufficientCredit => Explanation {
            cause: "Your team's wallet cannot pay for this call. \
                    The balance, minus money held for calls in progress, is below the call's price.",
            fix: "Top up your team's wallet at the `top_up_url` in the problem body, or ask a team admin to do it. \
                  Then send the request again; the body shows `balance` and `required`.",
            prevent: "Watch the `Tollgate-Balance` header and the `Tollgate-Warning: low-balance` warning on responses, or check `GET /_tollgate/me`. \
                      Set up auto top-up so the wallet refills when it falls under a threshold.",
        },
        Code::QuotaExhausted => Explanation {
            cause: "Your plan's included quota for this period is used up. \
                    The plan blocks calls beyond it instead of charging for them.",
            fix: "Wait until the period resets; `Retry-After` and `period_end` in the problem body say when. \
                  To continue now, move to a plan with a bigger included quota or one whose overage is `charge`.",
            prevent: "Watch `Tollgate-Warning: quota-nearly-exhausted` and the `RateLimit` headers, or check your quota use with `GET /_tollgate/me`. \
                      Choose a plan that fits your monthly volume.",
        },
        Code::BudgetExhausted => Explanation {
            cause: "Your app has spent its own spend budget for this period. \
                    The budget is set by your team on the app, to cap what the app may spend.",
            fix: "Ask a member of your team who manages the app to raise its budget. \
                  Otherwise wait for the budget to reset at the start of its next day, week or month.",
            prevent: "Watch `Tollgate-Warning: budget-nearly-exhausted` on responses and `GET /_tollgate/me`. \
                      Set the budget to match the app's expected spend.",
        },
        Code::SubscriptionExpired => Explanation {
            cause: "Your app's subscription to this service reached the end of its period without being renewed. \
                    The problem body gives `expired_at`.",
            fix: "Renew the subscription, or subscribe again in the portal or with `POST /api/v1/subscriptions`. \
                  Calls work again as soon as the subscription is active.",
            prevent: "Watch `Tollgate-Warning: subscription-expiring` on responses and the period end in `GET /_tollgate/me`. \
                      Renew before the period ends.",
        },
        Code::PaymentFailed => Explanation {
            cause: "Your subscription is `past_due`: its renewal fee could not be charged to your team's wallet.",
            fix: "Top up your team's wallet at the `top_up_url` in the problem body, or ask a team admin to do it. \
                  The renewal is retried automatically, and calls work again once it is paid.",
            prevent: "Keep the wallet above your plans' fees: watch `Tollgate-Balance` and `Tollgate-Warning: low-balance`. \
                      Set up auto top-up so renewals are never short of money.",
        },
        Code::PaymentRequired => Explanation {
            cause: "This service takes a payment with each request (x402), and your request carried none, or one that was not valid.",
            fix: "Read the `PAYMENT-REQUIRED` header of the 402: it lists the accepted payments with their amount, asset, network and recipient. \
                  Pay one of them and send the same request again with the `PAYMENT-SIGNATURE` header.",
            prevent: "Use a client that answers the `PAYMENT-REQUIRED` challenge on its own. \
                      Keep enough funds on the network the service accepts, and check `PAYMENT-RESPONSE` on success.",
        },
        Code::NotSubscribed => Explanation {
            cause: "The app that owns your key has no active subscription to this service. \
                    It may never have subscribed, or its subscription was cancelled.",
            fix: "Subscribe the app to one of the service's plans in the portal or with `POST /api/v1/subscriptions`. \
                  `GET /api/v1/catalog` lists the services and plans your team may subscribe to.",
            prevent: "Check `GET /_tollgate/me` to see which services your app is subscribed to. \
                      Make sure you call with the key of the app that holds the subscription.",
        },
        Code::SubscriptionPending => Explanation {
            cause: "Your app's subscription to this service waits for the provider's approval.",
            fix: "Wait for the provider to approve it; calls work as soon as they do. \
                  If it takes long, contact the provider.",
            prevent: "Subscribe well before you need the service. \
                      Register a webhook for `subscription.approved` to learn at once when it is approved.",
        },
        Code::SubscriptionRejected => Explanation {
            cause: "The provider rejected your app's subscription to this service. \
                    The problem's detail gives their reason.",
            fix: "Read the reason and contact the provider. \
                  Once it is dealt with, subscribe again, perhaps to another plan.",
            prevent: "Read each plan's terms in the portal before subscribing. \
                      Register a webhook for `subscription.rejected` to learn of a rejection at once.",
        },
        Code::SubscriptionSuspended => Explanation {
            cause: "The provider suspended your app's subscription to this service. \
                    The problem's detail gives their reason.",
            fix: "Contact the provider about the reason and ask them to resume the subscription. \
                  Calls work again as soon as they do.",
            prevent: "Follow the provider's terms of use. \
                      Register a webhook for `subscription.suspended` to learn of a suspension at once.",
        },
        Code::IpDenied => Explanation {
            cause: "You called from an address that an IP rule does not allow. \
                    The rule is either your app's allow-list or the service's own rules, and the detail names the address.",
            fix: "If the rule is your app's, a team member can add the address to the app's IP allow-list. \
                  If it is the service's, ask the provider, or call from an address they allow.",
            prevent: "Call from fixed outgoing addresses. \
                      Update the app's allow-list before moving your servers to new ones.",
        },
        Code::ScopeDenied => Explanation {
            cause: "Your key's scopes do not cover this service or this method. \
                    For example, a `weather:read` key may only use GET, HEAD and OPTIONS on `weather`.",
            fix: "Use a key whose scopes include this service, or create one with `POST /api/v1/apps/{app}/keys`. \
                  An empty scope list covers every service the app is subscribed to.",
            prevent: "When you create a key, give it the scopes for everything that key will call. \
                      Keep separate keys for read-only and read-write use.",
        },
        Code::TenantDenied => Explanation {
            cause: "This service is private to the team that runs it, and your app belongs to another team.",
            fix: "Call it with an app of the service's own team. \
                  Otherwise ask the provider to offer the service to other teams.",
            prevent: "Use only services listed for your team by `GET /api/v1/catalog` or in the portal.",
        },
        Code::RouteNotFound => Explanation {
            cause: "No published route matches your request's host and path. \
                    The path may be misspelled, miss the service's base path, or belong to a service that is not published yet.",
            fix: "Check the URL against the service's documentation in the portal, including its base path. \
                  Then send the request again.",
            prevent: "Build URLs from the service's OpenAPI document rather than by hand. \
                      Watch for `Deprecation` and `Sunset` headers that announce changes.",
        },
        Code::RequestNotFound => Explanation {
            cause: "The call log holds no request with this id made by your app. \
                    It may belong to another app, be older than the log's retention, or not be written yet (calls are logged within a second).",
            fix: "Check the id against the `X-Request-Id` header of the response, and ask with the key of the app that made the call.",
            prevent: "Keep the `X-Request-Id` of calls you may want to look into, and look them up soon after.",
        },
        Code::ModelNotFound => Explanation {
            cause: "No AI service on this gateway offers the model you named, neither as `<provider>/<model>` nor as an alias.",
            fix: "List the models your key may use with `GET /v1/models` and call one of them, or ask the service's team to add the model.",
            prevent: "Read model names from `GET /v1/models` instead of hard-coding them, and prefer the aliases a service defines: they survive model changes.",
        },
        Code::UpstreamInvalidOutput => Explanation {
            cause: "The prompt API promises JSON of a declared shape, and the model's answer was not valid JSON or did not match that schema.",
            fix: "Call again: models answer differently each time, and this call was not charged.",
            prevent: "If it happens often, ask the service's team to tighten the prompt, lower its temperature or choose a model that follows JSON schemas well.",
        },
        Code::MethodNotAllowed => Explanation {
            cause: "The path exists, but not with the HTTP method you used.",
            fix: "Use one of the methods listed in the `Allow` header of the response.",
            prevent: "Check each operation's method in the service's documentation or OpenAPI document.",
        },
        Code::ServiceRetired => Explanation {
            cause: "The provider has retired this service, so it no longer answers calls.",
            fix: "Move to the service that replaces it, or find another one in the catalog. \
                  The provider's documentation in the portal may name the successor.",
            prevent: "Watch for the `Deprecation` and `Sunset` headers and `Tollgate-Warning: deprecated`. \
                      They announce the retirement date while there is still time to move.",
        },
        Code::BodyTooLarge => Explanation {
            cause: "Your request body is larger than this route allows. \
                    The limit is set by the provider.",
            fix: "Send a smaller body, for example by splitting the data over several requests.",
            prevent: "Check the size of your bodies before sending them. \
                      Ask the provider for the route's limit if their documentation does not give it.",
        },
        Code::RateLimited => Explanation {
            cause: "You sent requests faster than a limit allows. \
                    It may be your plan's limit, your app's own limit, or a limit on the route shared by all callers.",
            fix: "Wait the number of seconds in `Retry-After`, then send the request again.",
            prevent: "Read the `RateLimit` header (`r` is what remains, `t` the seconds until the window ends) and `RateLimit-Policy`, and pace your calls. \
                      Limit how many requests you run at once, retry with backoff, or choose a plan with higher limits.",
        },
        Code::UpstreamError => Explanation {
            cause: "The gateway could not reach the service's backend: the connection was refused or broke before an answer came. \
                    You are not charged for this call.",
            fix: "Retry after a short wait. \
                  If it keeps happening, tell the provider and give them the `X-Request-Id` of the response.",
            prevent: "Retry failed calls with exponential backoff. \
                      Make requests that change data safe to repeat.",
        },
        Code::NoHealthyUpstream => Explanation {
            cause: "Every backend server of this service is down, out of service after failures, or drained. \
                    You are not charged for this call.",
            fix: "Retry after a short wait. \
                  If it lasts, tell the provider and give them the `X-Request-Id` of the response.",
            prevent: "Treat 503 as temporary: retry with exponential backoff. \
                      Keep a fallback in your app for when the service is unavailable.",
        },
        Code::CircuitOpen => Explanation {
            cause: "The service's backend failed many times in a row, so the gateway stops sending it requests for a while to let it recover. \
                    You are not charged for this call.",
            fix: "Wait a little and retry. \
                  Calls go through again once the backend answers normally.",
            prevent: "Treat 503 as temporary: retry with exponential backoff instead of at once. \
                      Keep a fallback in your app for when the service is unavailable.",
        },
        Code::LedgerUnavailable => Explanation {
            cause: "This gateway node cannot reach its ledger right now, so it cannot account for a paid call: it does not take one. \
                    Nothing was forwarded and you are not charged for this call.",
            fix: "Retry after a short wait (the response's `Retry-After`); the next try may reach another node. \
                  If it lasts, tell the gateway's operator and give them the `X-Request-Id` of the response.",
            prevent: "Treat 503 as temporary: retry with exponential backoff. \
                      Operators: keep the gateway's database reachable from every node; `/_tollgate/ready` says when it is not.",
        },
        Code::UpstreamTimeout => Explanation {
            cause: "The service's backend did not answer in time. \
                    You are not charged for this call.",
            fix: "Retry after a short wait. \
                  For a request that changes data, check first whether it took effect, since the backend may have done the work.",
            prevent: "Ask for smaller pieces of work per request. \
                      Retry with exponential backoff, and make requests that change data safe to repeat.",
        },
        Code::BadRequest => Explanation {
            cause: "Your request could not be handled as sent. \
                    It may not be valid HTTP/1.1, have an ambiguous body length (for example both `Content-Length` and `Transfer-Encoding`), or have a body that could not be read.",
            fix: "Read the problem's detail, which says what was wrong. \
                  Fix the request and send it again on a new connection.",
            prevent: "Use a standard HTTP client library rather than writing requests by hand. \
                      Do not set `Content-Length` and `Transfer-Encoding` yourself.",
        },
        Code::RequestTimeout => Explanation {
            cause: "Your request's body stopped arriving before the call's time was up: the gateway waited for the rest of it, and the service could not answer without it. \
                    You are not charged for this call.",
            fix: "Send the request again on a new connection, with its whole body. \
                  If you stream the body from a slow source, read it into memory or a file first.",
            prevent: "Send the body as soon as the request head is sent, without pausing between parts. \
                      Keep request bodies small enough to upload within the route's timeout.",
        },
        Code::HeadersTooLarge => Explanation {
            cause: "Your request's headers are too large: over 64 KiB in all, or more than 128 header fields.",
            fix: "Remove headers you do not need, such as large cookies or repeated custom headers. \
                  Then send the request again on a new connection.",
            prevent: "Keep headers small and put large data in the request body.",
        },
        Code::InternalError => Explanation {
            cause: "Something went wrong inside the gateway itself. \
                    This is not caused by your request.",
            fix: "Retry after a short wait. \
                  If it keeps happening, report it to the gateway's operators with the `X-Request-Id` of the response.",
            prevent: "Retry failed calls with exponential backoff. \
                      Keep the `X-Request-Id` of failed calls so they can be traced.",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_three_full_sentences() {
        for code in Code::ALL {
            let explanation = explain(code);
            for (field, text) in [
                ("cause", explanation.cause),
                ("fix", explanation.fix),
                ("prevent", explanation.prevent),
            ] {
                assert!(
                    !text.trim().is_empty(),
                    "{}: {field} is empty",
                    code.as_str()
                );
                assert!(
                    text.ends_with('.'),
                    "{}: {field} does not end with a full stop",
                    code.as_str()
                );
            }
        }
    }
}
