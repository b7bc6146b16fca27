//! librdkafka properties from where secrets belong: a Java-style properties file (as Kafka's
//! own `client.properties`) and environment variables, besides command-line flags, so a
//! `sasl.password` need not sit in a process listing or a compose file.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PropertiesError {
    #[error("reading Kafka properties from {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {text:?} is not KEY=VALUE")]
    Syntax {
        path: String,
        line: usize,
        text: String,
    },
}

/// Parses `key=value` (or `key: value`) lines; blank lines and lines starting with `#` or `!`
/// are skipped, and whitespace around keys and values is trimmed.
pub fn parse(path: &str, text: &str) -> Result<BTreeMap<String, String>, PropertiesError> {
    let mut properties = BTreeMap::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let split = line
            .find(['=', ':'])
            .map(|at| (&line[..at], &line[at + 1..]));
        match split {
            Some((key, value)) if !key.trim().is_empty() => {
                properties.insert(key.trim().to_string(), value.trim().to_string());
            }
            _ => {
                return Err(PropertiesError::Syntax {
                    path: path.to_string(),
                    line: idx + 1,
                    text: line.to_string(),
                })
            }
        }
    }
    Ok(properties)
}

/// Reads a properties file (see [`parse`]).
pub fn read_file(path: &Path) -> Result<BTreeMap<String, String>, PropertiesError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PropertiesError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &text)
}

/// Properties from variables named `{prefix}KEY`, as Confluent's images do: what follows the
/// prefix is lowercased and its underscores become dots, so `{prefix}SASL_PASSWORD` sets
/// `sasl.password`. librdkafka's property names have no underscores, so this is unambiguous.
pub fn from_vars(
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(prefix)?;
            (!key.is_empty()).then(|| (key.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_properties_file_parses() {
        let text =
            "# Confluent Cloud\nsecurity.protocol=SASL_SSL\n\nsasl.mechanism = SCRAM-SHA-512\n\
                    ! also a comment\nsasl.password=p=ss:word\nssl.ca.location: /etc/ca.pem\n";
        let properties = parse("client.properties", text).unwrap();
        assert_eq!(properties["security.protocol"], "SASL_SSL");
        assert_eq!(properties["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(properties["sasl.password"], "p=ss:word");
        assert_eq!(properties["ssl.ca.location"], "/etc/ca.pem");
        assert_eq!(properties.len(), 4);
    }

    #[test]
    fn a_line_without_a_separator_names_its_place() {
        let err = parse("f.properties", "a=1\nsasl.password\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.properties line 2: \"sasl.password\" is not KEY=VALUE"
        );
        assert!(parse("f", "=value\n").is_err());
    }

    #[test]
    fn variables_become_dotted_lowercase_properties() {
        let vars = [
            ("STRAND_SAGA_KAFKA_PROPERTY_SASL_PASSWORD", "secret"),
            ("STRAND_SAGA_KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL"),
            ("STRAND_SAGA_KAFKA_PROPERTY_", "ignored"),
            ("STRAND_SAGA_KAFKA_BROKERS", "not a property"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let properties = from_vars("STRAND_SAGA_KAFKA_PROPERTY_", vars);
        assert_eq!(properties["sasl.password"], "secret");
        assert_eq!(properties["security.protocol"], "SASL_SSL");
        assert_eq!(properties.len(), 2);
    }
}
