package login

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
)

// testProvider is a real OpenID provider on loopback: the example provider
// of github.com/zitadel/oidc, with its in-memory storage, its login form,
// and users whose groups the test sets. Its ID tokens carry
// preferred_username and groups.
type testProvider struct {
	*httptest.Server
	Issuer string
	users  *providerUsers
}

// providerUsers is the provider's user directory; it is safe for
// concurrent use, so a test can change a user's groups between logins.
type providerUsers struct {
	mu     sync.Mutex
	byID   map[string]*storage.User
	groups map[string][]string
}

func (u *providerUsers) GetUserByID(id string) *storage.User {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.byID[id]
}

func (u *providerUsers) GetUserByUsername(name string) *storage.User {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, x := range u.byID {
		if x.Username == name {
			return x
		}
	}
	return nil
}

func (u *providerUsers) ExampleClientID() string { return storage.ServiceUserID }

// add adds a user with password "verysecure" and the given groups.
func (u *providerUsers) add(name string, groups ...string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	id := "id-" + name
	u.byID[id] = &storage.User{ID: id, Username: name, Password: "verysecure", Email: name + "@example.test", EmailVerified: true}
	u.groups[id] = groups
}

func (u *providerUsers) setGroups(name string, groups ...string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.groups["id-"+name] = groups
}

// claimsStorage is the example storage plus the claims AnsFlow reads: the
// example puts no profile claims and no groups in its ID tokens.
type claimsStorage struct {
	*storage.Storage
	users *providerUsers
}

func (s *claimsStorage) SetUserinfoFromScopes(ctx context.Context, ui *zoidc.UserInfo, userID, clientID string, scopes []string) error {
	if err := s.Storage.SetUserinfoFromScopes(ctx, ui, userID, clientID, scopes); err != nil {
		return err
	}
	u := s.users.GetUserByID(userID)
	if u == nil {
		return nil
	}
	ui.PreferredUsername = u.Username
	s.users.mu.Lock()
	groups := append([]string(nil), s.users.groups[userID]...)
	s.users.mu.Unlock()
	if groups != nil {
		ui.AppendClaims("groups", groups)
	}
	return nil
}

// startProvider starts the provider with one web client, clientID with
// secret, allowed to redirect to redirectURL.
func startProvider(t *testing.T, clientID, secret, redirectURL string) *testProvider {
	t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	issuer := "http://" + ts.Listener.Addr().String() + "/"
	users := &providerUsers{byID: map[string]*storage.User{}, groups: map[string][]string{}}
	clients := map[string]*storage.Client{clientID: storage.WebClient(clientID, secret, redirectURL)}
	st := &claimsStorage{Storage: storage.NewStorageWithClients(users, clients), users: users}
	// The example logs every request to slog's default logger.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	ts.Config.Handler = exampleop.SetupServer(issuer, st, nil, false)
	ts.Start()
	t.Cleanup(ts.Close)
	return &testProvider{Server: ts, Issuer: issuer, users: users}
}
