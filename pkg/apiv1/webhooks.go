package apiv1

// WebhookResponse is the JSON answer to a forge's webhook delivery
// (POST /webhooks/{provider}/{pipeline}).
type WebhookResponse struct {
	// Status is accepted (a run was created), duplicate (the delivery's run
	// already exists), ignored (the trigger rules do not start a run),
	// rejected (a 4xx: the delivery is refused) or failed (a 503: the run
	// could not be created; a retry of the delivery may succeed).
	Status   string `json:"status"`
	Delivery string `json:"delivery,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// RunID and RunURL name the delivery's run when Status is accepted or
	// duplicate; RunURL is the API path of the run document.
	RunID  string `json:"run_id,omitempty"`
	RunURL string `json:"run_url,omitempty"`
}
