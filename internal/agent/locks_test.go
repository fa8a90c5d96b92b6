package agent

import (
	"fmt"
	"testing"
	"time"
)

func TestMaintenanceWindows(t *testing.T) {
	// 2026-11-23 is a Monday.
	at := func(day int, hhmm string) time.Time {
		ts, err := time.Parse("2006-01-02 15:04", fmt.Sprintf("2026-11-%02d %s", day, hhmm))
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	for _, tc := range []struct {
		windows []string
		when    time.Time
		want    bool
	}{
		{[]string{"22:00-06:00"}, at(23, "23:30"), true},
		{[]string{"22:00-06:00"}, at(24, "05:59"), true},
		{[]string{"22:00-06:00"}, at(24, "06:00"), false},
		{[]string{"22:00-06:00"}, at(24, "12:00"), false},
		{[]string{"Mon-Fri 12:00-13:00"}, at(23, "12:30"), true},
		{[]string{"Mon-Fri 12:00-13:00"}, at(28, "12:30"), false}, // Saturday
		{[]string{"Sat,Sun 00:00-24:00"}, at(29, "03:00"), true},
		{[]string{"Sat,Sun 00:00-24:00"}, at(30, "03:00"), false}, // Monday
		{[]string{"Fri 22:00-02:00"}, at(28, "01:00"), true},      // Saturday 01:00 belongs to Friday's window
		{[]string{"Fri-Mon 10:00-11:00"}, at(29, "10:15"), true},  // wraps through the weekend
		{[]string{"Mon 10:00-11:00", "Tue 10:00-11:00"}, at(24, "10:15"), true},
	} {
		ws, err := parseWindows(tc.windows)
		if err != nil {
			t.Fatalf("%v: %v", tc.windows, err)
		}
		if got := inWindow(ws, tc.when); got != tc.want {
			t.Errorf("inWindow(%v, %s) = %v, want %v", tc.windows, tc.when.Format("Mon 15:04"), got, tc.want)
		}
	}
	for _, bad := range []string{"22:00", "25:00-26:00", "Someday 10:00-11:00", "10:00-11:00 extra words", "10:61-11:00"} {
		if _, err := parseWindows([]string{bad}); err == nil {
			t.Errorf("parseWindows(%q) accepted", bad)
		}
	}
}
