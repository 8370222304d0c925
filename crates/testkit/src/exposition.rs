//! Reading a `/metrics` page (the Prometheus text format): its series, and one value by name
//! and labels. Every series of a PrexorCloud process also carries its `service` and `replica`
//! labels (docs/observability.md, "Metrics"), which a lookup need not name.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample on `page` (comments and unreadable lines skipped).
pub fn series(page: &str) -> Vec<Series> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (selector, value) = line.rsplit_once(' ')?;
            let (name, labels) = selector_parts(selector)?;
            Some(Series {
                name,
                labels,
                value: value.trim().parse().ok()?,
            })
        })
        .collect()
}

/// The value of `selector` (`name` or `name{label="value",…}`) on `page`: the sum over the
/// series of that name carrying at least those labels; `None` when there is none.
pub fn metric(page: &str, selector: &str) -> Option<f64> {
    let (name, wanted) = selector_parts(selector)?;
    let matching: Vec<f64> = series(page)
        .into_iter()
        .filter(|s| s.name == name && wanted.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// `name{a="x",b="y"}` → the name and its labels (values unescaped).
fn selector_parts(selector: &str) -> Option<(String, BTreeMap<String, String>)> {
    let Some((name, rest)) = selector.split_once('{') else {
        return Some((selector.trim().to_owned(), BTreeMap::new()));
    };
    let mut body = rest.trim_end().strip_suffix('}')?;
    let mut labels = BTreeMap::new();
    loop {
        body = body.trim_start_matches([',', ' ']);
        if body.is_empty() {
            return Some((name.to_owned(), labels));
        }
        let (key, after) = body.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        body = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP x\n\
        prexor_ticks_total{service=\"scheduler\",replica=\"s-1\"} 7\n\
        prexor_fenced_writes_total{service=\"scheduler\",replica=\"s-1\",result=\"stale\"} 2\n\
        prexor_fenced_writes_total{service=\"scheduler\",replica=\"s-1\",result=\"applied\"} 5\n\
        prexor_ticks_total_other 9\n\
        prexor_odd{service=\"api\",route=\"/a,b\\\"c\"} 1.5\n";

    #[test]
    fn series_are_read_by_name_and_the_labels_given() {
        assert_eq!(metric(PAGE, "prexor_ticks_total"), Some(7.0));
        assert_eq!(
            metric(PAGE, "prexor_fenced_writes_total{result=\"stale\"}"),
            Some(2.0)
        );
        assert_eq!(metric(PAGE, "prexor_fenced_writes_total"), Some(7.0));
        assert_eq!(metric(PAGE, "prexor_missing"), None);
        assert_eq!(metric(PAGE, "prexor_ticks_total{service=\"api\"}"), None);
    }

    #[test]
    fn label_values_are_unescaped() {
        let odd = series(PAGE)
            .into_iter()
            .find(|s| s.name == "prexor_odd")
            .unwrap();
        assert_eq!(odd.labels["route"], "/a,b\"c");
        assert_eq!(odd.value, 1.5);
    }
}
