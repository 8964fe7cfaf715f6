// Package apiv1 holds the request and response types of AnsFlow's REST API,
// version 1 (/api/v1, see docs/api.md and GET /api/v1/openapi.json): what
// clients such as the CLI and the web UI send and receive.
//
// They are the API's contract, not the pipeline service's storage: the
// service keeps its own records (a stored run carries bookkeeping no client
// sees) and answers with these types, so the CLI never imports the
// service's packages and a change to storage does not change the API.
package apiv1
