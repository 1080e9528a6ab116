//! An index over a virtual host's routes so that finding the first matching route does not
//! scan every route: exact paths by hash, prefixes in a byte trie, and only the rest (regexes,
//! case-insensitive matches) in a list. Envoy's rule, "the first route that matches wins", is
//! kept: each source yields its lowest matching route index and the lowest of those wins.

use super::route::{PathMatch, Route};
use std::collections::HashMap;

/// Below this many routes a plain scan is as fast as the index and simpler.
const INDEX_THRESHOLD: usize = 8;

#[derive(Debug, Default)]
pub struct RouteIndex {
    enabled: bool,
    /// Case-sensitive exact paths → route indexes, ascending.
    exact: HashMap<String, Vec<u32>>,
    /// Case-sensitive prefix and separated-prefix routes.
    trie: Vec<TrieNode>,
    /// Every other route, ascending.
    linear: Vec<u32>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// Child nodes by next byte, sorted by byte.
    children: Vec<(u8, u32)>,
    /// Routes whose prefix ends at this node, ascending.
    routes: Vec<u32>,
}

impl RouteIndex {
    pub fn build(routes: &[Route]) -> Self {
        if routes.len() <= INDEX_THRESHOLD {
            return Self::default();
        }
        let mut index = Self {
            enabled: true,
            trie: vec![TrieNode::default()],
            ..Default::default()
        };
        for (i, route) in routes.iter().enumerate() {
            let i = i as u32;
            match &route.path {
                PathMatch::Exact {
                    path,
                    case_sensitive: true,
                } => index.exact.entry(path.clone()).or_default().push(i),
                PathMatch::Prefix {
                    prefix,
                    case_sensitive: true,
                }
                | PathMatch::SeparatedPrefix {
                    prefix,
                    case_sensitive: true,
                } => index.insert_prefix(prefix.as_bytes(), i),
                _ => index.linear.push(i),
            }
        }
        index
    }

    fn insert_prefix(&mut self, prefix: &[u8], route: u32) {
        let mut node = 0usize;
        for &b in prefix {
            let next = match self.trie[node]
                .children
                .binary_search_by_key(&b, |(c, _)| *c)
            {
                Ok(pos) => self.trie[node].children[pos].1 as usize,
                Err(pos) => {
                    self.trie.push(TrieNode::default());
                    let id = self.trie.len() - 1;
                    self.trie[node].children.insert(pos, (b, id as u32));
                    id
                }
            };
            node = next;
        }
        self.trie[node].routes.push(route);
    }

    /// The first route (in configuration order) that matches, like a scan would find.
    pub fn find<'a>(
        &self,
        routes: &'a [Route],
        path: &str,
        query: &str,
        head: &super::matcher::RequestHead<'_>,
    ) -> Option<&'a Route> {
        let full_match = |i: &u32| {
            let r = &routes[*i as usize];
            r.path.matches(path) && r.matches_rest(head, query)
        };
        if !self.enabled {
            return routes
                .iter()
                .find(|r| r.path.matches(path) && r.matches_rest(head, query));
        }
        let mut best: Option<u32> = None;
        let mut consider = |list: &[u32]| {
            // Lists are ascending: stop at the first match, or once past the best so far.
            for i in list {
                if best.is_some_and(|b| *i >= b) {
                    break;
                }
                if full_match(i) {
                    best = Some(*i);
                    break;
                }
            }
        };
        if let Some(list) = self.exact.get(path) {
            consider(list);
        }
        let mut node = 0usize;
        consider(&self.trie[0].routes);
        for &b in path.as_bytes() {
            match self.trie[node]
                .children
                .binary_search_by_key(&b, |(c, _)| *c)
            {
                Ok(pos) => node = self.trie[node].children[pos].1 as usize,
                Err(_) => break,
            }
            consider(&self.trie[node].routes);
        }
        consider(&self.linear);
        best.map(|i| &routes[i as usize])
    }
}
