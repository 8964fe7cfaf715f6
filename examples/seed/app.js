// my-app: answers GET / with a greeting and its version.
'use strict';
const http = require('node:http');

function greeting(name) {
  return `hello, ${name || 'world'} from my-app ${process.env.APP_VERSION || 'dev'} (${process.env.NODE_ENV || 'development'})`;
}

function handler(req, res) {
  const url = new URL(req.url, 'http://localhost');
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end(greeting(url.searchParams.get('name')) + '\n');
}

if (require.main === module) {
  http.createServer(handler).listen(Number(process.env.PORT || 8080));
}
module.exports = { greeting, handler };
