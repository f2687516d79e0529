import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isSecretParam, maskUrlSecrets, redactUrl } from './url-secrets.js';

test('isSecretParam: names holding pass, pwd, secret, token or key (any case, decoded)', () => {
  for (const n of ['password', 'sslpassword', 'PASSWORD', 'passwd', 'PWD', 'client_secret', 'access_token', 'api_key', 'apikey', 'sslkey', 'pass%77ord']) assert.ok(isSecretParam(n), n);
  for (const n of ['sslmode', 'user', 'application_name', 'connect_timeout', 'q', 'host', '%zz']) assert.ok(!isSecretParam(n), n);
});

test('redactUrl: the userinfo password and secret query parameters are masked, the rest kept', () => {
  assert.equal(redactUrl('postgres://tp@127.0.0.1:5432/turnpike?password=PgS3cretPW'), 'postgres://tp@127.0.0.1:5432/turnpike?password=***');
  assert.equal(redactUrl('postgres://tp:PgS3cretPW@127.0.0.1:5432/turnpike'), 'postgres://tp:***@127.0.0.1:5432/turnpike');
  assert.equal(
    redactUrl('postgresql://tp@db/turnpike?sslmode=require&sslpassword=K3yPass&application_name=x&PassWord=again#frag'),
    'postgresql://tp@db/turnpike?sslmode=require&sslpassword=***&application_name=x&PassWord=***#frag',
  );
  // a value with blanks or quotes is masked whole (the whole input is the URL)
  assert.equal(redactUrl("postgres://h/db?password=a b'c\"d&x=1"), 'postgres://h/db?password=***&x=1');
  assert.equal(redactUrl('redis://:R3dis@127.0.0.1:6379/0?password=R3dis'), 'redis://:***@127.0.0.1:6379/0?password=***');
  assert.equal(redactUrl('postgres://h/db?password='), 'postgres://h/db?password=', 'nothing to hide');
  assert.equal(redactUrl('postgres://h/db'), 'postgres://h/db');
  assert.equal(redactUrl('sqlite:./turnpike.db'), 'sqlite:./turnpike.db');
  assert.equal(redactUrl('not a url ?password=x'), '(unparsable URL)');
});

test('maskUrlSecrets: every URL in a text, parsable or not; the text around them unchanged', () => {
  assert.equal(
    maskUrlSecrets('invalid URL "http://u:hunter2@127.0.0.1:bad/p?token=T0k3n&q=1" and postgres://x/db?password=PW (done)'),
    'invalid URL "http://u:***@127.0.0.1:bad/p?token=***&q=1" and postgres://x/db?password=*** (done)',
  );
  assert.equal(maskUrlSecrets('http://u:hunter2@x@127.0.0.1:bad/p'), 'http://u:***@127.0.0.1:bad/p', 'a password with an @ runs to the host');
  assert.equal(maskUrlSecrets('https://u:hunter2@x/api?q=1'), 'https://u:***@x/api?q=1');
  assert.equal(maskUrlSecrets('no url here ?password=x'), 'no url here ?password=x');
  assert.equal(maskUrlSecrets('http://h/cb#access_token=T0k3n&state=s'), 'http://h/cb#access_token=***&state=s', 'a fragment carries tokens too');
});

test('a secret parameter after a \';\' (a separator to Rack < 3, Python\'s old parse_qs and others) is masked too; a secret value with a \';\' is masked whole', () => {
  assert.equal(redactUrl('https://hooks.example/x?team=a;token=W3bh00k&q=1'), 'https://hooks.example/x?team=a;token=***&q=1');
  assert.equal(redactUrl('postgres://tp@db/turnpike?sslmode=require;password=PgS3cretPW'), 'postgres://tp@db/turnpike?sslmode=require;password=***');
  assert.equal(redactUrl('redis://127.0.0.1:6379/0?db=0;password=R3dis;x=1#f'), 'redis://127.0.0.1:6379/0?db=0;password=***#f', 'to the next & or #');
  // (to a server that splits on '&' only, the password is 'ab;cd': none of it is shown)
  assert.equal(redactUrl('postgres://h/db?password=ab;cd&x=1'), 'postgres://h/db?password=***&x=1');
  assert.equal(maskUrlSecrets('invalid URL "http://h:bad/p?a=1;api_key=K3y" (x)'), 'invalid URL "http://h:bad/p?a=1;api_key=***" (x)');
  assert.equal(maskUrlSecrets('http://h/cb#state=s;access_token=T0k3n'), 'http://h/cb#state=s;access_token=***');
  assert.equal(redactUrl('http://h/p;v=1?a=1;b=2&c=3'), 'http://h/p;v=1?a=1;b=2&c=3', 'nothing secret: unchanged');
});

test('a URL with one slash or none after its scheme (postgres:/u:PW@db, a typo) still has its password masked: config errors quote such a value (it fails the pattern), and --store says it back', async () => {
  assert.equal(redactUrl('postgres:/turnpike:Hunter2pw@db.internal/turnpike'), 'postgres:/turnpike:***@db.internal/turnpike');
  assert.equal(redactUrl('redis:/:R3dispw@cache:6379'), 'redis:/:***@cache:6379');
  assert.equal(maskUrlSecrets('invalid value "postgres:turnpike:Hunter2pw@db/x" and "rediss:/u:R3dispw@c:6379/0"'), 'invalid value "postgres:turnpike:***@db/x" and "rediss:/u:***@c:6379/0"');
  assert.equal(maskUrlSecrets('store (line 2): expected file, sqlite:PATH'), 'store (line 2): expected file, sqlite:PATH', 'nothing else is touched');
  assert.equal(redactUrl('sqlite:./a:b/turnpike.db'), 'sqlite:./a:b/turnpike.db');
  const { parseConfigText } = await import('../config/load.js');
  for (const [key, value] of [['store', 'postgres:/turnpike:Hunter2pw@db.internal/turnpike'], ['redis', 'redis:/:Hunter2pw@cache:6379']]) {
    assert.throws(() => parseConfigText(`listen: 127.0.0.1:8080\n${key}: "${value}"\n`), (err: Error) => {
      assert.match(err.message, new RegExp(`${key} \\(line 2\\)`));
      assert.ok(!err.message.includes('Hunter2pw'), err.message);
      return true;
    });
  }
});
