// Package guard holds the tests that keep berth's shape: the vocabulary and
// the planner stay free of Docker, SQL and HTTP; every package says what it is
// for; and berthd links only the packages in testdata/berthd-deps.txt, so the
// server, SQL and the dashboard never creep onto robots.
package guard
