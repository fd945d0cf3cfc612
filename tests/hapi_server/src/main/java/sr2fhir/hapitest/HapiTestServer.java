package sr2fhir.hapitest;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;

import org.hl7.fhir.instance.model.api.IBaseResource;
import org.springframework.boot.Banner;
import org.springframework.boot.WebApplicationType;
import org.springframework.boot.builder.SpringApplicationBuilder;
import org.springframework.boot.web.servlet.context.ServletWebServerApplicationContext;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.dao.DaoRegistry;
import ca.uhn.fhir.rest.api.server.SystemRequestDetails;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;

/**
 * A HAPI FHIR JPA server (H2 in memory) for sr2fhir's integration tests.
 *
 * <pre>java -Xmx1g -XX:TieredStopAtLevel=1 -jar hapi-test-server.jar --fhir-version r5|r4 [--port 0]
 *     [--fix-imagingselection-code]</pre>
 *
 * Listens on 127.0.0.1 only; base URL {@code http://127.0.0.1:<port>/fhir}. Prints exactly one
 * line {@code LISTENING <port>} on stdout once {@code GET /fhir/metadata} answers 200; everything
 * else goes to stderr. Exits on SIGTERM and when its standard input reaches end of file, so a
 * test run that dies leaves no server behind.
 */
public final class HapiTestServer {

	private HapiTestServer() {}

	public static void main(String[] args) {
		// stdout carries the LISTENING line only: anything else that prints goes to stderr.
		PrintStream stdout = System.out;
		System.setOut(System.err);

		String version = null;
		int port = 0;
		boolean fixImagingSelectionCode = false;
		for (int i = 0; i < args.length; i++) {
			String arg = args[i];
			if (arg.equals("--fhir-version") && i + 1 < args.length) {
				version = args[++i].toLowerCase();
			} else if (arg.equals("--port") && i + 1 < args.length) {
				port = Integer.parseInt(args[++i]);
			} else if (arg.equals("--fix-imagingselection-code")) {
				fixImagingSelectionCode = true;
			} else {
				usage("unknown argument: " + arg);
			}
		}
		if (!"r5".equals(version) && !"r4".equals(version)) {
			usage("--fhir-version must be r5 or r4");
		}

		watchStdin();

		Class<?> versionConfig = "r5".equals(version) ? R5Config.class : R4Config.class;
		Map<String, Object> properties = new HashMap<>();
		properties.put("server.port", port);
		properties.put("server.address", "127.0.0.1");
		properties.put("server.shutdown", "immediate");
		properties.put("spring.main.banner-mode", "off");
		properties.put("spring.main.log-startup-info", "false");
		// HAPI 8 defines several beans under the same name in different configs (as its starter allows).
		properties.put("spring.main.allow-bean-definition-overriding", "true");
		properties.put("spring.main.allow-circular-references", "true");

		ServletWebServerApplicationContext context = (ServletWebServerApplicationContext) new SpringApplicationBuilder(
						ServerConfig.class, versionConfig)
				.web(WebApplicationType.SERVLET)
				.bannerMode(Banner.Mode.OFF)
				.properties(properties)
				.registerShutdownHook(true)
				.run();
		if (fixImagingSelectionCode && "r5".equals(version)) {
			installImagingSelectionCode(context);
		}
		int actualPort = context.getWebServer().getPort();
		awaitMetadata(actualPort);
		stdout.println("LISTENING " + actualPort);
		stdout.flush();
	}

	/**
	 * FHIR R5 5.0.0's search parameter {@code clinical-code} (which HAPI uses for
	 * {@code ImagingSelection?code=}) has the expression {@code ImagingSelection.status}, so the
	 * default server indexes the status under "code". This stores a SearchParameter with the same
	 * base and code and the expression {@code ImagingSelection.code}; HAPI then uses it instead of
	 * the built-in one (for resources written from now on: the store is empty here).
	 */
	private static void installImagingSelectionCode(ServletWebServerApplicationContext context) {
		FhirContext fhirContext = context.getBean(FhirContext.class);
		IBaseResource searchParameter = fhirContext.newJsonParser().parseResource(
				"{\"resourceType\":\"SearchParameter\",\"id\":\"sr2fhir-test-imagingselection-code\","
				+ "\"url\":\"urn:sr2fhir:test:SearchParameter/ImagingSelection-code\",\"name\":\"code\","
				+ "\"status\":\"active\",\"description\":\"ImagingSelection.code (R5 5.0.0 indexes the status)\","
				+ "\"code\":\"code\",\"base\":[\"ImagingSelection\"],\"type\":\"token\","
				+ "\"expression\":\"ImagingSelection.code\"}");
		context.getBean(DaoRegistry.class).getResourceDao("SearchParameter")
				.update(searchParameter, new SystemRequestDetails());
		context.getBean(ISearchParamRegistry.class).forceRefresh();
	}

	private static void usage(String problem) {
		System.err.println(problem);
		System.err.println("usage: java -jar hapi-test-server.jar --fhir-version r5|r4 [--port N] "
				+ "[--fix-imagingselection-code]");
		System.exit(2);
	}

	/** A daemon thread that exits the JVM (running the shutdown hooks) when stdin closes. */
	private static void watchStdin() {
		Thread watcher = new Thread(() -> {
			InputStream in = System.in;
			byte[] buffer = new byte[256];
			try {
				while (in.read(buffer) >= 0) {
					// discard
				}
			} catch (IOException ignored) {
				// treat like end of file
			}
			System.err.println("stdin closed: shutting down");
			System.exit(0);
		}, "stdin-watcher");
		watcher.setDaemon(true);
		watcher.start();
	}

	/** Waits until the FHIR servlet answers {@code GET /fhir/metadata} (it initialises on load). */
	private static void awaitMetadata(int port) {
		HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
		HttpRequest request = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + "/fhir/metadata"))
				.header("Accept", "application/fhir+json")
				.timeout(Duration.ofSeconds(60))
				.GET()
				.build();
		long deadline = System.nanoTime() + Duration.ofSeconds(120).toNanos();
		while (true) {
			try {
				HttpResponse<Void> response = client.send(request, HttpResponse.BodyHandlers.discarding());
				if (response.statusCode() == 200) {
					return;
				}
				System.err.println("GET /fhir/metadata answered " + response.statusCode());
			} catch (IOException e) {
				System.err.println("GET /fhir/metadata failed: " + e);
			} catch (InterruptedException e) {
				Thread.currentThread().interrupt();
				throw new IllegalStateException(e);
			}
			if (System.nanoTime() > deadline) {
				System.err.println("the FHIR servlet did not answer GET /fhir/metadata: giving up");
				System.exit(1);
			}
			try {
				Thread.sleep(100);
			} catch (InterruptedException e) {
				Thread.currentThread().interrupt();
				throw new IllegalStateException(e);
			}
		}
	}
}
