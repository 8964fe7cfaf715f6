'use strict';
const test = require('node:test');
const assert = require('node:assert');
const http = require('node:http');
const { greeting, handler } = require('../app.js');

test('greets by name', () => {
  assert.match(greeting('ansflow'), /^hello, ansflow from my-app/);
});

test('is built for production', () => {
  assert.strictEqual(process.env.NODE_ENV, 'production');
});

test('serves the greeting over HTTP', async () => {
  const server = http.createServer(handler).listen(0);
  const port = server.address().port;
  const body = await new Promise((resolve, reject) => {
    http.get(`http://127.0.0.1:${port}/?name=ci`, (res) => {
      let data = '';
      res.on('data', (c) => (data += c));
      res.on('end', () => resolve(data));
    }).on('error', reject);
  });
  server.close();
  assert.match(body, /^hello, ci from my-app/);
});
