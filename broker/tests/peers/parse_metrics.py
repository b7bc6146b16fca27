"""Parses a /metrics answer with the Prometheus project's own parser and prints its samples.

    parse_metrics.py CONTENT_TYPE < body

The parser is chosen by the content type the server declared: OpenMetrics text
(`application/openmetrics-text`) goes to prometheus_client.openmetrics.parser, which refuses
anything that breaks OpenMetrics (a missing `# EOF`, a counter sample without `_total`...);
`text/plain; version=0.0.4` to the Prometheus text parser. Prints one JSON array of
[name, {labels}, value]; a parse error exits non-zero with the parser's message.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as prometheus_text

content_type = sys.argv[1]
body = sys.stdin.read()
if content_type.startswith("application/openmetrics-text"):
    families = openmetrics(body)
elif content_type.startswith("text/plain"):
    families = prometheus_text(body)
else:
    sys.exit(f"unexpected content type {content_type!r}")
samples = []
for family in families:
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump(samples, sys.stdout)
