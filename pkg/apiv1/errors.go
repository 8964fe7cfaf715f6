package apiv1

// ErrorBody is the JSON of every error response.
type ErrorBody struct {
	Error  string        `json:"error"`
	Errors []ErrorDetail `json:"errors,omitempty"`
}

// ErrorDetail locates one validation problem.
type ErrorDetail struct {
	File    string `json:"file,omitempty"`
	Line    int    `json:"line,omitempty"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}
