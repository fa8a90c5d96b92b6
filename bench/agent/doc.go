// Package agent holds benchmarks of berthd against the real Docker Engine:
// a no-change redeploy, release switch time and downtime per update strategy,
// the agent's idle memory and its binary size. The benchmarks live in
// agent_test.go; results and how to reproduce them are in BENCHMARKS.md at
// the repository root.
package agent
