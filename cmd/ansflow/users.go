package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"

	"golang.org/x/term"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
)

// cmdUsers is `ansflow users add|list|delete`: the human users who log in to
// the web UI. A password is read from --password-file or standard input,
// never from a flag, which other users of the machine could read.
func cmdUsers(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return invalid("usage: ansflow users add NAME --role R [--pipelines P,...] [--password-file FILE] | list [--output json] | delete NAME")
	}
	var role, pipelines, passwordFile string
	var disabled bool
	c, output, fs, err := clientFlags("users "+args[0], args[1:], func(fs *flag.FlagSet) {
		if args[0] == "add" {
			fs.StringVar(&role, "role", "", "viewer, operator or admin")
			fs.StringVar(&pipelines, "pipelines", "", "limit the grant to these pipelines (comma-separated globs)")
			fs.StringVar(&passwordFile, "password-file", "", "read the password from this file instead of standard input")
			fs.BoolVar(&disabled, "disabled", false, "create the user disabled")
		}
	})
	if err != nil {
		return err
	}
	switch args[0] {
	case "add":
		if fs.NArg() != 1 {
			return invalid("usage: ansflow users add NAME --role R [--pipelines P,...] [--password-file FILE]")
		}
		r, err := auth.ParseRole(role)
		if err != nil {
			return invalid("--role: %v", err)
		}
		globs := splitList(pipelines)
		password, err := readPassword(passwordFile, os.Stdin, os.Stderr)
		if err != nil {
			return err
		}
		body, _ := json.Marshal(apiv1.CreateUserRequest{Name: fs.Arg(0), Role: r, Pipelines: globs, Password: password, Disabled: disabled})
		var u apiv1.User
		if err := c.do(ctx, http.MethodPost, "/api/v1/users", "application/json", bytes.NewReader(body), &u); err != nil {
			return err
		}
		if output == "json" {
			return printJSON(os.Stdout, u)
		}
		fmt.Printf("user %s created (%s)\n", u.Name, u.Role)
		return nil
	case "list":
		var us []apiv1.User
		if err := c.do(ctx, http.MethodGet, "/api/v1/users", "", nil, &us); err != nil {
			return err
		}
		if output == "json" {
			return printJSON(os.Stdout, us)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tPIPELINES\tSOURCE\tDISABLED\tCREATED")
		for _, u := range us {
			p := strings.Join(u.Pipelines, ",")
			if p == "" {
				p = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", u.Name, u.Role, p, u.Source, u.Disabled, u.CreatedAt.Format("2006-01-02 15:04"))
		}
		return tw.Flush()
	case "delete":
		if fs.NArg() != 1 {
			return invalid("usage: ansflow users delete NAME")
		}
		return c.do(ctx, http.MethodDelete, "/api/v1/users/"+url.PathEscape(fs.Arg(0)), "", nil, nil)
	}
	return invalid("unknown users command %q: want add, list or delete", args[0])
}

// readPassword reads a password from file, or else from stdin: its first
// line, asked for without echo when stdin is a terminal.
func readPassword(file string, stdin *os.File, prompt io.Writer) (string, error) {
	var line string
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", invalid("--password-file: %v", err)
		}
		line, _, _ = strings.Cut(string(b), "\n")
	case term.IsTerminal(int(stdin.Fd())):
		fmt.Fprint(prompt, "Password: ")
		b, err := term.ReadPassword(int(stdin.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		line = string(b)
	default:
		l, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read password from standard input: %w", err)
		}
		line = l
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", invalid("no password: give it on standard input or with --password-file")
	}
	return line, nil
}
