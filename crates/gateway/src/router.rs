//! The route matcher: a segment trie per host (plus one for routes without a
//! host), compiled from the routes of every served service. Matching walks
//! the trie with priority literal > `{param}` > `/*` and backtracks, so the
//! most specific pattern that allows the method wins; a path that matches
//! only with other methods is a 405 with the allowed methods.

/// The router's maps: looked up a few times per request with keys that
/// are short texts, which foldhash hashes in a fraction of SipHash's time.
/// Lookups never insert, so colliding keys cannot be forced in.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use domain::path::Segment;

/// Bit per method; 0 means any method.
pub type MethodMask = u16;

const METHODS: [(&str, MethodMask); 9] = [
    ("GET", 1),
    ("HEAD", 1 << 1),
    ("POST", 1 << 2),
    ("PUT", 1 << 3),
    ("PATCH", 1 << 4),
    ("DELETE", 1 << 5),
    ("OPTIONS", 1 << 6),
    ("TRACE", 1 << 7),
    ("CONNECT", 1 << 8),
];

/// Methods not in the table get this bit; only "any method" routes match them.
const OTHER_METHOD: MethodMask = 1 << 15;

pub fn method_bit(method: &http::Method) -> MethodMask {
    METHODS
        .iter()
        .find(|(name, _)| *name == method.as_str())
        .map_or(OTHER_METHOD, |(_, bit)| *bit)
}

/// A route's methods: as [`method_mask`], and a route that answers GET
/// answers HEAD too (RFC 9110 §9.3.2: HEAD is GET without the body).
pub fn route_method_mask(methods: &[String]) -> MethodMask {
    let mask = method_mask(methods);
    if mask & 1 != 0 { mask | 1 << 1 } else { mask }
}

pub fn method_mask(methods: &[String]) -> MethodMask {
    methods
        .iter()
        .map(|m| {
            METHODS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(m))
                .map_or(0, |(_, bit)| *bit)
        })
        .fold(0, |mask, bit| mask | bit)
}

/// The `Allow` header value for a mask.
pub fn allow_header(mask: MethodMask) -> String {
    METHODS
        .iter()
        .filter(|(_, bit)| mask & bit != 0)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Default, Debug, Clone)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Routes whose pattern ends here.
    terminal: Vec<Entry>,
    /// Routes whose pattern is this prefix followed by `/*`.
    wildcard: Vec<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    route: usize,
    methods: MethodMask,
}

/// The result of matching a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    /// Index of the route (as given to [`RouterBuilder::add`]).
    Found(usize),
    /// The path matched, but not with this method: the allowed methods,
    /// and the first route whose path matched (the service the call log
    /// names for the refusal).
    MethodNotAllowed(MethodMask, usize),
    NotFound,
}

#[derive(Default, Debug)]
pub struct RouterBuilder {
    any_host: Node,
    hosts: HashMap<String, Node>,
}

impl RouterBuilder {
    /// Adds a route. `segments` is the full pattern (base path + route path).
    pub fn add(
        &mut self,
        host: Option<&str>,
        segments: &[Segment],
        methods: MethodMask,
        route: usize,
    ) {
        let mut node = match host {
            // A route stored with a final '.' (before it was refused)
            // matches as requests are matched: without it.
            Some(host) => {
                let host = host.strip_suffix('.').unwrap_or(host);
                self.hosts.entry(host.to_ascii_lowercase()).or_default()
            }
            None => &mut self.any_host,
        };
        let entry = Entry { route, methods };
        for segment in segments {
            match segment {
                Segment::Literal(text) => {
                    node = node.literal.entry(text.as_str().into()).or_default();
                }
                Segment::Param(_) => {
                    node = node.param.get_or_insert_with(Box::default);
                }
                Segment::Wildcard => {
                    node.wildcard.push(entry);
                    return;
                }
            }
        }
        node.terminal.push(entry);
    }

    pub fn build(self) -> Router {
        Router {
            any_host: self.any_host,
            hosts: self.hosts,
        }
    }
}

#[derive(Default, Debug, Clone)]
pub struct Router {
    any_host: Node,
    hosts: HashMap<String, Node>,
}

/// What matching has seen so far.
struct Search {
    method: MethodMask,
    found: Option<usize>,
    /// Methods of routes whose path matched.
    allowed: MethodMask,
    /// The first route whose path matched.
    path_matched: Option<usize>,
}

impl Search {
    /// Takes the first entry that allows the method. Returns true when done.
    fn offer(&mut self, entries: &[Entry]) -> bool {
        for entry in entries {
            self.path_matched.get_or_insert(entry.route);
            if entry.methods == 0 || entry.methods & self.method != 0 {
                self.found = Some(entry.route);
                return true;
            }
            self.allowed |= entry.methods;
        }
        false
    }
}

fn walk(node: &Node, segments: &[&str], search: &mut Search) -> bool {
    match segments.split_first() {
        None => {
            if search.offer(&node.terminal) {
                return true;
            }
        }
        Some((first, rest)) => {
            if let Some(child) = node.literal.get(*first)
                && walk(child, rest, search)
            {
                return true;
            }
            if !first.is_empty()
                && let Some(child) = &node.param
                && walk(child, rest, search)
            {
                return true;
            }
        }
    }
    // `/prefix/*` matches the prefix itself and everything under it.
    search.offer(&node.wildcard)
}

impl Router {
    /// Whether any route is bound to a host.
    pub fn has_hosts(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// Matches a host (lower-case, without port) and a path.
    pub fn find(&self, host: Option<&str>, path: &str, method: &http::Method) -> Match {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        // A single trailing slash is ignored: `/a/b/` matches `/a/b`.
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let mut segments: smallvec::SmallVec<[&str; 16]> = smallvec::SmallVec::new();
        if !trimmed.is_empty() {
            segments.extend(trimmed.split('/'));
        }
        let mut search = Search {
            method: method_bit(method),
            found: None,
            allowed: 0,
            path_matched: None,
        };
        if let Some(host) = host
            && let Some(node) = self.hosts.get(host)
            && walk(node, &segments, &mut search)
        {
            return search.found.map_or(Match::NotFound, Match::Found);
        }
        if walk(&self.any_host, &segments, &mut search) {
            return search.found.map_or(Match::NotFound, Match::Found);
        }
        match search.path_matched {
            Some(route) => Match::MethodNotAllowed(search.allowed, route),
            None => Match::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::path::parse_pattern;
    use http::Method;

    fn router(routes: &[(Option<&str>, &str, &[&str])]) -> Router {
        let mut builder = RouterBuilder::default();
        for (index, (host, pattern, methods)) in routes.iter().enumerate() {
            let methods: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
            builder.add(
                *host,
                &parse_pattern(pattern).unwrap(),
                method_mask(&methods),
                index,
            );
        }
        builder.build()
    }

    fn check(router: &Router, host: Option<&str>, method: Method, path: &str, expected: Match) {
        assert_eq!(
            router.find(host, path, &method),
            expected,
            "{method} {host:?} {path}"
        );
    }

    #[test]
    fn priorities_params_and_prefixes() {
        let r = router(&[
            (None, "/weather/forecast/{city}", &["GET"]),
            (None, "/weather/forecast/today", &["GET"]),
            (None, "/weather/*", &[]),
            (None, "/weather/forecast/{city}", &["POST"]),
            (
                Some("api.example.com"),
                "/weather/forecast/{city}",
                &["GET"],
            ),
            (None, "/", &["GET"]),
        ]);
        check(
            &r,
            None,
            Method::GET,
            "/weather/forecast/paris",
            Match::Found(0),
        );
        check(
            &r,
            None,
            Method::GET,
            "/weather/forecast/today",
            Match::Found(1),
        );
        check(
            &r,
            None,
            Method::GET,
            "/weather/forecast/paris/",
            Match::Found(0),
        );
        check(
            &r,
            None,
            Method::POST,
            "/weather/forecast/paris",
            Match::Found(3),
        );
        // A literal that allows only GET falls back to the param route for POST.
        check(
            &r,
            None,
            Method::POST,
            "/weather/forecast/today",
            Match::Found(3),
        );
        // Anything else under /weather goes to the prefix route (any method).
        check(
            &r,
            None,
            Method::DELETE,
            "/weather/forecast/paris",
            Match::Found(2),
        );
        check(&r, None, Method::GET, "/weather", Match::Found(2));
        check(&r, None, Method::GET, "/weather/a/b/c", Match::Found(2));
        check(&r, None, Method::GET, "/weatherx", Match::NotFound);
        check(&r, None, Method::GET, "/", Match::Found(5));
        check(
            &r,
            Some("api.example.com"),
            Method::GET,
            "/weather/forecast/x",
            Match::Found(4),
        );
        check(
            &r,
            Some("other.example.com"),
            Method::GET,
            "/weather/forecast/x",
            Match::Found(0),
        );
    }

    #[test]
    fn method_not_allowed_lists_methods() {
        let r = router(&[
            (None, "/a/{id}", &["GET"]),
            (None, "/a/{id}", &["PUT", "DELETE"]),
        ]);
        check(
            &r,
            None,
            Method::POST,
            "/a/1",
            Match::MethodNotAllowed(
                method_mask(&["GET".into(), "PUT".into(), "DELETE".into()]),
                0,
            ),
        );
        assert_eq!(
            allow_header(method_mask(&["GET".into(), "PUT".into()])),
            "GET, PUT"
        );
        check(&r, None, Method::GET, "/a", Match::NotFound);
        check(&r, None, Method::GET, "/a//", Match::NotFound);
    }
}

#[cfg(test)]
mod head_tests {
    use super::*;

    #[test]
    fn a_get_route_answers_head() {
        let get = route_method_mask(&["GET".into()]);
        assert_eq!(get, method_mask(&["GET".into(), "HEAD".into()]));
        assert_eq!(allow_header(get), "GET, HEAD");
        let post = route_method_mask(&["POST".into()]);
        assert_eq!(post, method_mask(&["POST".into()]));
        assert_eq!(route_method_mask(&[]), 0, "any method stays any method");
    }
}
