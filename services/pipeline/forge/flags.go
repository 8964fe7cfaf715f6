package forge

import (
	"flag"
	"os"
)

// RegisterFlags adds the commit status settings to fs and returns the
// Config they fill in when fs is parsed. The external URL statuses link
// to is the service's --external-url ([service.Config].ExternalURL).
func RegisterFlags(fs *flag.FlagSet) *Config {
	c := &Config{APIURLs: map[string]string{}}
	fs.StringVar(&c.TokenSecret, "forge-token-secret", DefaultTokenSecret,
		"stored secret (the pipeline's, else the global one) holding the forge API token that posts commit statuses; a pipeline's status.token_secret overrides it")
	fs.StringVar(&c.CAFile, "forge-ca-file", os.Getenv("ANSFLOW_FORGE_CA_FILE"), "PEM file of the CAs trusted for the forges' HTTPS certificates instead of the system's (a forge with a private CA; env ANSFLOW_FORGE_CA_FILE)")
	fs.BoolVar(&c.Steps, "forge-step-statuses", false, "post a commit status per step as well as the run's, unless a pipeline's status.steps says otherwise")
	for _, p := range []struct{ provider, flag, help string }{
		{"github", "github-api-url", "GitHub REST API root commit statuses are posted to, e.g. https://api.github.com/ or https://HOST/api/v3/ (default: the URL a webhook's payload gives)"},
		{"gitlab", "gitlab-url", "GitLab instance commit statuses are posted to, e.g. https://gitlab.com/ (default: the URL a webhook's payload gives)"},
		{"gitea", "gitea-url", "Gitea instance commit statuses are posted to, e.g. https://gitea.example.com/ (default: the URL a webhook's payload gives)"},
	} {
		fs.Func(p.flag, p.help, func(v string) error {
			c.APIURLs[p.provider] = v
			return nil
		})
	}
	return c
}
