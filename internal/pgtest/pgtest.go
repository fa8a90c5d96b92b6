// Package pgtest gives tests a real PostgreSQL: the server named by the DSN
// in BERTH_TEST_POSTGRES, or else a throwaway cluster that it starts from
// Debian's binaries (/usr/lib/postgresql/*/bin) in a temporary directory,
// listening on a free loopback port and a unix socket in that directory,
// as the postgres user when the tests run as root (initdb refuses root).
//
// One Cluster serves a whole test binary; each test gets a database of its
// own. Use it from TestMain:
//
//	var pg pgtest.Cluster
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		pg.Close()
//		os.Exit(code)
//	}
//
//	func TestSomething(t *testing.T) {
//		dsn := pg.NewDatabase(t)
//		…
//	}
//
// When PostgreSQL cannot be had, NewDatabase fails the test if CI=true and
// skips it otherwise, saying why. Under -short, outside CI and without
// BERTH_TEST_POSTGRES, it skips rather than start a cluster.
package pgtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDSN names the environment variable with the DSN of a PostgreSQL server
// to use instead of starting one. Its user must be allowed CREATE DATABASE.
const EnvDSN = "BERTH_TEST_POSTGRES"

// Cluster is a PostgreSQL server for the tests of one binary, started on
// first use. The zero value is ready.
type Cluster struct {
	once  sync.Once
	err   error
	admin string // DSN of the server's maintenance database
	dir   string // the throwaway cluster's directory; "" for an outside server
	cmd   *exec.Cmd
	exit  chan struct{} // closed when the postmaster exits
	tag   string        // random, in the names of this Cluster's databases
	seq   atomic.Int64
}

// NewDatabase creates an empty database and returns its DSN; the database
// is dropped when t ends. The first call starts the cluster.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	c.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Unique across test binaries sharing a server: a random part per
	// Cluster, a count within it, then the test's name for whoever looks.
	name := fmt.Sprintf("t_%s_%d_%s", c.tag, c.seq.Add(1), strings.ToLower(nonWord.ReplaceAllString(t.Name(), "_")))
	if len(name) > 63 {
		name = name[:63]
	}
	if err := c.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("PostgreSQL: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("PostgreSQL: drop database %s: %v", name, err)
		}
	})
	dsn, err := withDatabase(c.admin, name)
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// Require starts the cluster on first use, and fails or skips t (see the
// package comment) if PostgreSQL cannot be had.
func (c *Cluster) Require(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvDSN) == "" && testing.Short() && !inCI() {
		t.Skip("PostgreSQL: skipped under -short; set " + EnvDSN + " or drop -short to run against a real server")
	}
	if c.Start(context.Background()) != nil {
		if inCI() {
			t.Fatalf("PostgreSQL: %v\n(CI=true: a missing PostgreSQL fails the tests; install Debian's postgresql package or set %s)", c.err, EnvDSN)
		}
		t.Skipf("PostgreSQL: %v\n(skipping; install Debian's postgresql package or set %s to a DSN)", c.err, EnvDSN)
	}
}

// Start starts the cluster, once; later calls return the first one's
// error. Tests call Require instead; Start is for programs that are not
// tests (bench/fleet), which then call CreateDatabase and Close.
func (c *Cluster) Start(ctx context.Context) error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		c.tag = strings.ToLower(rand.Text()[:6])
		c.err = c.start(ctx)
	})
	return c.err
}

// CreateDatabase creates an empty database called name in a started
// cluster and returns its DSN. Nothing drops it but Close (of a cluster
// this Cluster started).
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := c.Start(ctx); err != nil {
		return "", err
	}
	if err := c.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("PostgreSQL: create database %s: %w", name, err)
	}
	return withDatabase(c.admin, name)
}

// PID is the process ID of the postmaster this Cluster started, or 0
// (an outside server, or not started).
func (c *Cluster) PID() int {
	if c.cmd == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// Close stops the cluster, if this Cluster started one, and removes its
// files. An outside server is left as it is.
func (c *Cluster) Close() error {
	if c.cmd == nil {
		return nil
	}
	c.cmd.Process.Signal(syscall.SIGINT) // fast shutdown: end sessions, stop
	select {
	case <-c.exit:
	case <-time.After(15 * time.Second):
		c.cmd.Process.Kill()
		<-c.exit
	}
	c.cmd = nil
	return os.RemoveAll(c.dir)
}

var nonWord = regexp.MustCompile(`[^A-Za-z0-9]+`)

func inCI() bool { return os.Getenv("CI") == "true" }

// exec runs one statement on the maintenance database.
func (c *Cluster) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, c.admin)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// withDatabase returns dsn naming database name instead.
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("%s: not a URL: %w", EnvDSN, err)
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	// key=value: a later key wins.
	return dsn + " dbname=" + name, nil
}

func (c *Cluster) start(ctx context.Context) error {
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		c.admin = dsn
		if err := c.exec(ctx, "SELECT 1"); err != nil {
			return fmt.Errorf("%s is set, but the server does not answer: %w", EnvDSN, err)
		}
		return nil
	}
	bin, err := findBinaries()
	if err != nil {
		return err
	}
	if c.dir, err = os.MkdirTemp("", "berth-pg-"); err != nil {
		return err
	}
	attr, err := runAs(c.dir)
	if err != nil {
		os.RemoveAll(c.dir)
		return err
	}
	if err := c.initdb(ctx, bin, attr); err != nil {
		os.RemoveAll(c.dir)
		return err
	}
	// A free port can be taken between looking and binding: try again.
	for try := 0; ; try++ {
		err = c.run(ctx, bin, attr)
		if err == nil || try == 2 || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		os.RemoveAll(c.dir)
		return err
	}
	return nil
}

// findBinaries returns the bin directory of the newest PostgreSQL installed
// the Debian way, or the one whose initdb is on PATH.
func findBinaries() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dirs[i])), 64)
		vj, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dirs[j])), 64)
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL binaries: neither /usr/lib/postgresql/*/bin/postgres nor initdb on PATH (apt-get install postgresql)")
}

func (c *Cluster) initdb(ctx context.Context, bin string, attr *syscall.SysProcAttr) error {
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"--pgdata", filepath.Join(c.dir, "data"), "--username", "postgres", "--auth", "trust",
		"--encoding", "UTF8", "--locale", "C", "--no-sync")
	cmd.Dir = c.dir
	cmd.SysProcAttr = attr
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	return nil
}

// run starts the postmaster on a free port and waits until it answers.
func (c *Cluster) run(ctx context.Context, bin string, attr *syscall.SysProcAttr) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	logPath := filepath.Join(c.dir, "postgres.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(bin, "postgres"),
		"-D", filepath.Join(c.dir, "data"), "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-k", c.dir,
		// Throwaway data: durability off, for speed.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=32MB")
	cmd.Dir = c.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exit := make(chan struct{})
	go func() { cmd.Wait(); close(exit) }()
	c.admin = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.exec(pctx, "SELECT 1")
		cancel()
		if err == nil {
			c.cmd, c.exit = cmd, exit
			return nil
		}
		select {
		case <-exit:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres exited while starting: %s", log)
		case <-ctx.Done():
			cmd.Process.Kill()
			<-exit
			return fmt.Errorf("postgres did not answer on port %d: %w", port, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
