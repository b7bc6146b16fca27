//! `strand-bench` as a user runs it: tiny runs of the debug binary, checking what it writes
//! (the JSON result, the charts, the histogram), never how fast anything went.

mod cli;
