import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;

import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.Resource;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.parser.IParser;

/**
 * Writes the FHIR R4 4.0.1 core definitions that HAPI ships in hapi-fhir-validation-resources-r4
 * (XML Bundles on the class path) as an npm-package-shaped {@code hl7.fhir.r4.core#4.0.1} folder,
 * the layout of a FHIR package cache that SUSHI reads: {@code DIR/package/package.json} plus one
 * JSON file per StructureDefinition, ValueSet and CodeSystem.
 *
 * <pre>java -cp 'tests/hapi_server/target/lib/*' tests/dose_ig/R4CorePackage.java DIR</pre>
 *
 * (Java's single-file source launcher: no build step of its own.)
 */
public final class R4CorePackage {

	private static final String ROOT = "/org/hl7/fhir/r4/model/";
	private static final List<String> BUNDLES = List.of(
			"profile/profiles-types.xml",
			"profile/profiles-resources.xml",
			"profile/profiles-others.xml",
			"extension/extension-definitions.xml",
			"valueset/valuesets.xml",
			"valueset/v2-tables.xml",
			"valueset/v3-codesystems.xml");
	private static final Set<String> KEPT = Set.of("StructureDefinition", "ValueSet", "CodeSystem");
	private static final String PACKAGE_JSON = """
			{
			  "name": "hl7.fhir.r4.core",
			  "version": "4.0.1",
			  "type": "Core",
			  "fhirVersions": ["4.0.1"],
			  "description": "FHIR R4 4.0.1 core definitions, written from HAPI FHIR's hapi-fhir-validation-resources-r4 by sr2fhir's tests/dose_ig/R4CorePackage.java",
			  "license": "CC0-1.0",
			  "url": "http://hl7.org/fhir/R4"
			}
			""";

	private R4CorePackage() {}

	public static void main(String[] args) throws IOException {
		if (args.length != 1) {
			System.err.println("usage: java -cp 'tests/hapi_server/target/lib/*' R4CorePackage.java DIR");
			System.exit(2);
		}
		Path packageDir = Path.of(args[0]).resolve("package");
		Files.createDirectories(packageDir);
		FhirContext ctx = FhirContext.forR4();
		IParser xml = ctx.newXmlParser();
		IParser json = ctx.newJsonParser();
		int written = 0;
		for (String name : BUNDLES) {
			try (InputStream in = R4CorePackage.class.getResourceAsStream(ROOT + name)) {
				if (in == null) {
					throw new IOException(ROOT + name + " is not on the class path (hapi-fhir-validation-resources-r4)");
				}
				Bundle bundle = xml.parseResource(Bundle.class, in);
				for (Bundle.BundleEntryComponent entry : bundle.getEntry()) {
					Resource resource = entry.getResource();
					if (resource == null || !KEPT.contains(resource.fhirType())) {
						continue;
					}
					String id = resource.getIdElement().getIdPart();
					Path file = packageDir.resolve(resource.fhirType() + "-" + id + ".json");
					Files.writeString(file, json.encodeResourceToString(resource), StandardCharsets.UTF_8);
					written++;
				}
			}
		}
		Files.writeString(packageDir.resolve("package.json"), PACKAGE_JSON, StandardCharsets.UTF_8);
		System.out.println("R4CorePackage: wrote " + written + " definitions to " + packageDir);
	}
}
